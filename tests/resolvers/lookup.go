// Resolves each name on the command line with Go's own resolver (no cgo), as containerd, Kaniko
// and Knative's controllers do, and prints one address per line; exits 2 when a name does not
// resolve.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
)

func main() {
	resolver := &net.Resolver{PreferGo: true}
	for _, name := range os.Args[1:] {
		addrs, err := resolver.LookupHost(context.Background(), name)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		for _, addr := range addrs {
			fmt.Println(addr)
		}
	}
}
