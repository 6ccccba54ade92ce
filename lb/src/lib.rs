//! Maglev consistent hashing and Service compilation (issue: service load balancing).
