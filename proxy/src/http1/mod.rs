//! The HTTP/1.1 wire format, shared by the server (`listen::h1`) and the backend exchange
//! (`upstream::h1`): header lines kept as received (`raw_headers`), the client's headers read
//! from them or from hyper's map (`client_headers`), timers armed only when needed (`timer`), and
//! dates formatted once a second (`date`).

pub mod client_headers;
pub mod date;
pub mod raw_headers;
pub mod timer;
