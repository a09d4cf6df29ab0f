//! The HTTP/1.1 wire format, shared by the server (`listen::h1`) and the backend exchange
//! (`upstream::h1`): header lines kept as received (`raw_headers`), the client's headers read
//! from them or from hyper's map (`client_headers`), and timers armed only when needed (`timer`).

pub mod client_headers;
pub mod raw_headers;
pub mod timer;
