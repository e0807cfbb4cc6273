// CoreDNS for the end-to-end tests (tests/e2e.rs): CoreDNS's own coremain with the plugins that
// kubeadm's default Corefile and NodeLocal DNSCache's Corefile use (plus log), built from the
// github.com/coredns/coredns module pinned in this go.mod. A CoreDNS release binary is the same
// coremain with every plugin; importing only these keeps the cold build short (no cloud SDKs).
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func main() {
	coremain.Run()
}
