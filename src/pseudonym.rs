//! Keyed pseudonyms per recipient. (Being built.)
