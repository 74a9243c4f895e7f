//! TODO(owner): crate doc.
