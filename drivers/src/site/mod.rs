//! The site: the config file that maps name prefixes to sources, and the routes built from it.

pub mod config;
pub mod import;
pub mod route;
