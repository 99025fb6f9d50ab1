// Command sluice-ingress is Sluice's SMTP ingress: it accepts mail over SMTP
// and answers 250 only once the message is stored in JetStream.
//
//	sluice-ingress [-config sluice.yaml]
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/sluice-mta/sluice/ingress/daemon"
	"github.com/sluice-mta/sluice/services/lifecycle"
	"github.com/sluice-mta/sluice/services/telemetry"
)

func main() {
	path := flag.String("config", "", "configuration file (YAML); defaults apply without it")
	flag.Parse()
	cfg, err := daemon.Load(*path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sluice-ingress:", err)
		os.Exit(2)
	}
	ctx, stop := lifecycle.SignalContext()
	defer stop()
	lifecycle.HugePages(ctx)
	lifecycle.AdaptProcs(ctx)
	if err := daemon.Run(ctx, cfg, lifecycle.Host{OTel: telemetry.EnvFrom(os.LookupEnv)}); err != nil {
		fmt.Fprintln(os.Stderr, "sluice-ingress:", err)
		os.Exit(1)
	}
}
