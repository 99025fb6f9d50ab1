// Command sluice-deliverer runs a Sluice deliverer: it takes ready jobs from
// JetStream, delivers them over SMTP to the destinations' mail servers and
// reports each attempt. Any number of deliverers share the work.
//
// Usage:
//
//	sluice-deliverer [-config sluice.yaml]
//
// SIGHUP reads the file again, with the shaping file it names
// (deliverer.shaping.file), and puts its deliverer.shaping section in force
// without a restart.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/sluice-mta/sluice/deliverer/daemon"
	"github.com/sluice-mta/sluice/deliverer/worker"
	"github.com/sluice-mta/sluice/services/lifecycle"
	"github.com/sluice-mta/sluice/services/telemetry"
)

func main() {
	path := flag.String("config", "", "configuration file (YAML); defaults apply without one")
	flag.Parse()
	cfg, err := daemon.Load(*path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := lifecycle.SignalContext()
	defer stop()
	lifecycle.HugePages(ctx)
	lifecycle.AdaptProcs(ctx)
	// SIGHUP reloads deliverer.shaping from the same file.
	reload := daemon.WithReload(func() (worker.Config, error) { return daemon.Load(*path) })
	if err := daemon.Run(ctx, cfg, lifecycle.Host{OTel: telemetry.EnvFrom(os.LookupEnv)}, reload); err != nil {
		fmt.Fprintln(os.Stderr, "sluice-deliverer:", err)
		os.Exit(1)
	}
}
