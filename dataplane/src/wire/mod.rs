//! Wire formats (in progress).
