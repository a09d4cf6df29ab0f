// Command coredns is CoreDNS with the plugins a Kubernetes cluster's DNS uses, for the cluster DNS
// of Tollgate's test node (tests/src/node.rs). The full CoreDNS binary would also build every
// cloud provider's SDK; the list below is the order CoreDNS itself runs these plugins in.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

var directives = []string{
	"log",
	"errors",
	"health",
	"ready",
	"kubernetes",
	"cache",
}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
