//! A small, faithful Kubernetes API server for tests (list, watch, bookmarks, 410 Gone).
