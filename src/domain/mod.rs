//! Domain types: the model catalog and the validated request. No I/O lives here.
