//! One line for an error and its causes, each said once.
//!
//! anyhow's `{:#}` joins every cause's message. Some libraries (kube's configuration errors,
//! among others) already put their source's message into their own, so the same cause came out
//! three or four times in a row in the binaries' fatal error line.

use std::error::Error;

/// `error: cause: cause...`, leaving out a cause whose message is already in the line.
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = e.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose message may or may not repeat its source's, as kube's do.
    #[derive(Debug)]
    struct Layer {
        message: String,
        source: Option<Box<Layer>>,
    }

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.message)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.source.as_deref().map(|s| s as &(dyn Error + 'static))
        }
    }

    fn layer(message: &str, source: Option<Layer>) -> Layer {
        Layer {
            message: message.to_owned(),
            source: source.map(Box::new),
        }
    }

    #[test]
    fn causes_already_in_the_line_are_said_once() {
        let io = layer("No such file or directory (os error 2)", None);
        let read = layer(
            "failed to read kubeconfig: No such file or directory (os error 2)",
            Some(io),
        );
        let infer = layer(
            "failed to infer config: failed to read kubeconfig: No such file or directory (os error 2)",
            Some(read),
        );
        let top = layer("connecting to the Kubernetes API", Some(infer));
        assert_eq!(
            error_chain(&top),
            "connecting to the Kubernetes API: failed to infer config: failed to read kubeconfig: \
             No such file or directory (os error 2)"
        );
    }

    #[test]
    fn causes_not_in_the_line_are_all_said_in_order() {
        let top = layer(
            "binding --listen",
            Some(layer(
                "Address already in use",
                Some(layer("os error 98", None)),
            )),
        );
        assert_eq!(
            error_chain(&top),
            "binding --listen: Address already in use: os error 98"
        );
    }
}
