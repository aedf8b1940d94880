// Renders /openapi.json as a browsable reference. Plain DOM, no dependencies, no CDN.
(function () {
  "use strict";
  var content = document.getElementById("content");
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    (children || []).forEach(function (c) {
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }
  function resolve(spec, schema) {
    if (schema && schema.$ref) {
      var name = schema.$ref.split("/").pop();
      return { name: name, schema: spec.components.schemas[name] };
    }
    return { name: null, schema: schema };
  }
  function schemaText(spec, schema) {
    var r = resolve(spec, schema);
    return (r.name ? r.name + " " : "") + JSON.stringify(r.schema, null, 2);
  }
  function operation(spec, path, method, op) {
    var body = el("div", { "class": "body" }, []);
    if (op.description || op.summary) body.appendChild(el("p", {}, [op.description || op.summary]));
    if (op.security && op.security.length) body.appendChild(el("p", { "class": "lock" }, ["Requires a bearer access token."]));
    if (op.parameters && op.parameters.length) {
      var rows = op.parameters.map(function (p) {
        return el("tr", {}, [el("td", {}, [el("code", {}, [p.name])]), el("td", {}, [p.in]),
          el("td", {}, [p.required ? "required" : "optional"]), el("td", {}, [p.description || ""])]);
      });
      body.appendChild(el("h4", {}, ["Parameters"]));
      body.appendChild(el("table", {}, rows));
    }
    if (op.requestBody) {
      var types = Object.keys(op.requestBody.content || {});
      body.appendChild(el("h4", {}, ["Request body (" + types.join(", ") + ")"]));
      body.appendChild(el("pre", {}, [schemaText(spec, op.requestBody.content[types[0]].schema)]));
    }
    body.appendChild(el("h4", {}, ["Responses"]));
    Object.keys(op.responses || {}).forEach(function (status) {
      var resp = op.responses[status];
      body.appendChild(el("p", {}, [el("strong", {}, [status]), " " + (resp.description || "")]));
    });
    return el("details", {}, [
      el("summary", {}, [el("span", { "class": "m " + method }, [method.toUpperCase()]), path]),
      body,
    ]);
  }
  fetch("/openapi.json").then(function (r) { return r.json(); }).then(function (spec) {
    document.getElementById("title").textContent = spec.info.title;
    document.getElementById("version").textContent = spec.info.version;
    content.textContent = "";
    if (spec.info.description) content.appendChild(el("p", {}, [spec.info.description]));
    var byTag = {};
    Object.keys(spec.paths).forEach(function (path) {
      ["get", "post", "patch", "put", "delete"].forEach(function (method) {
        var op = spec.paths[path][method];
        if (!op) return;
        var tag = (op.tags && op.tags[0]) || "other";
        (byTag[tag] = byTag[tag] || []).push(operation(spec, path, method, op));
      });
    });
    Object.keys(byTag).sort().forEach(function (tag) {
      content.appendChild(el("h2", {}, [tag]));
      byTag[tag].forEach(function (node) { content.appendChild(node); });
    });
  }).catch(function (e) {
    content.textContent = "Could not load /openapi.json: " + e;
  });
})();
