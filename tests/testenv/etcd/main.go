// Command etcd is the etcd server built from its published Go module, for the
// Tollgate test environment (Debian's etcd 3.4 is too old for kube-apiserver 1.34).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
