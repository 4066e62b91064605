//! The error of a table operation, shared by both engines' table code.

/// A failure reading or writing a table: the engine's message, naming the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TableError(pub String);

impl From<TableError> for super::StoreError {
    fn from(e: TableError) -> Self {
        super::StoreError::Database(e.0)
    }
}
