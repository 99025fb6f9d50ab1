// Command sluice-bouncer turns DSN requests from SLUICE_BOUNCES into RFC 3464
// delivery status notifications queued on SLUICE_MSGS.
//
// Usage:
//
//	sluice-bouncer [-config sluice.yaml]
//
// It reads the nats, queue and bouncer sections of the file (defaults apply
// without one), then environment overrides (SLUICE_*). A configuration error
// exits 2; SIGINT or SIGTERM finishes the requests in hand and exits 0.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/sluice-mta/sluice/bouncer/daemon"
	"github.com/sluice-mta/sluice/services/lifecycle"
	"github.com/sluice-mta/sluice/services/telemetry"
)

func main() {
	configPath := flag.String("config", "", "path of the Sluice YAML configuration file (optional)")
	flag.Parse()
	cfg, err := daemon.Load(*configPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := lifecycle.SignalContext()
	defer stop()
	lifecycle.HugePages(ctx)
	lifecycle.AdaptProcs(ctx)
	if err := daemon.Run(ctx, cfg, lifecycle.Host{OTel: telemetry.EnvFrom(os.LookupEnv)}); err != nil {
		fmt.Fprintln(os.Stderr, "sluice-bouncer:", err)
		os.Exit(1)
	}
}
