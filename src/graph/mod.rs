//! The Microsoft Graph client: the only module that speaks HTTP to Graph.

pub mod models;
