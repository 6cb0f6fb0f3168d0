// Command etcd is etcd's own main, built from Go modules so tests need no
// download other than the module proxy.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
