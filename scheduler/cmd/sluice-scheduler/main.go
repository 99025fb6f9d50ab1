// Command sluice-scheduler runs Sluice's queue manager: it splits accepted
// messages into delivery jobs and applies deliverers' results (done, bounce,
// retry, expiry). Any number may run against the same NATS system.
//
// Usage:
//
//	sluice-scheduler [-config sluice.yaml]
//
// Without -config the defaults apply; SLUICE_* environment variables
// override the file (see the config packages).
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/sluice-mta/sluice/scheduler/daemon"
	"github.com/sluice-mta/sluice/services/lifecycle"
	"github.com/sluice-mta/sluice/services/telemetry"
)

func main() {
	path := flag.String("config", "", "path of the YAML configuration file")
	flag.Parse()
	cfg, err := daemon.Load(*path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sluice-scheduler:", err)
		os.Exit(2)
	}
	ctx, stop := lifecycle.SignalContext()
	defer stop()
	lifecycle.HugePages(ctx)
	lifecycle.AdaptProcs(ctx)
	if err := daemon.Run(ctx, cfg, lifecycle.Host{OTel: telemetry.EnvFrom(os.LookupEnv)}); err != nil {
		fmt.Fprintln(os.Stderr, "sluice-scheduler:", err)
		os.Exit(1)
	}
}
