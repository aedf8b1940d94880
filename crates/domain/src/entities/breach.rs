use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "breaches")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub scope: String,
    pub title: String,
    pub nature: String,
    pub data_categories: String,
    pub subjects_approx: Option<i64>,
    pub records_approx: Option<i64>,
    pub likely_consequences: String,
    pub measures: String,
    pub contact_point: String,
    pub high_risk: bool,
    pub affected_contacts: String,
    pub aware_at: DateTimeUtc,
    pub deadline_at: DateTimeUtc,
    pub status: String,
    pub late_reason: Option<String>,
    pub notified_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
