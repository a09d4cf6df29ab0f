//! Where configuration versions come from: YAML manifests in a directory (`standalone`, no
//! cluster) or the operator's config stream (`control_plane`, the fleet).

pub mod control_plane;
pub mod standalone;
