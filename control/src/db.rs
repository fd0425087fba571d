//! The SQLite repository: schema migrations and typed queries.
