//! A simulator of the upstream `/videos` API.

pub mod mp4gen;
