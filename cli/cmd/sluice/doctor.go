package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sluice-mta/sluice/cli/doctor"
	"github.com/sluice-mta/sluice/proto/admin"
)

const doctorUsage = `usage: sluice doctor <check> [flags]

checks, run on every deliverer, one row per deliverer:
  dns [DOMAIN...] EHLO name -> egress IP, PTR of each egress IP (forward-confirmed), and the mail DNS of each DOMAIN
                  (default: the sending domains): MX, null MX, implicit MX, the address of every MX host
  dnsbl           each egress IP against the configured DNSBL zones
  connect DOMAIN  MX lookup, TCP connect, banner, EHLO, STARTTLS to DOMAIN's mail servers; detects a blocked port 25
  auth DOMAIN     SPF for each egress IP, DKIM keys (published = ours, a signature verifies), DMARC policy
  tls DOMAIN      the TLS policy deliveries apply to DOMAIN (deliverer.tls_policy), its MTA-STS policy, the TLSA
                  records and DNSSEC status of its MX hosts, and what each MX host offers, checked by the policy

flags:
  -json          JSON Lines: one report per deliverer
  -wait D        how long to wait for the deliverers' answers (default 20s, connect 60s)
  -step-timeout D  timeout of each network step of a check (default 10s)
  -server URL    NATS server (default $SLUICE_NATS_URL or nats://127.0.0.1:4222)
  -creds FILE    NATS credentials
  -timeout D     connecting and discovering the deliverers (default 5s)

Exit status: 0 when every deliverer answered and no check found an error
(warnings allowed), 1 otherwise, 2 for bad usage.
`

// doctorOpts are the flags of "sluice doctor".
type doctorOpts struct {
	server, creds string
	timeout       time.Duration
	wait          time.Duration
	step          time.Duration
	json          bool
}

// runDoctor implements "sluice doctor": it reads the flags, connects, has
// package doctor discover the deliverers and gather their answers to the
// check, prints them and sets the exit status.
func runDoctor(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, doctorUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	check := args[0]
	switch check {
	case admin.DoctorDNS, admin.DoctorDNSBL, admin.DoctorConnect, admin.DoctorAuth, admin.DoctorTLS:
	default:
		fmt.Fprintf(stderr, "sluice doctor: unknown check %q\n\n%s", check, doctorUsage)
		return 2
	}
	o := doctorOpts{server: "nats://127.0.0.1:4222", timeout: 5 * time.Second, wait: 20 * time.Second, step: 10 * time.Second}
	if u := os.Getenv("SLUICE_NATS_URL"); u != "" {
		o.server = u
	}
	if check == admin.DoctorConnect || check == admin.DoctorTLS {
		o.wait = 60 * time.Second
	}
	fs := flag.NewFlagSet("sluice doctor "+check, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.server, "server", o.server, "")
	fs.StringVar(&o.creds, "creds", "", "")
	fs.DurationVar(&o.timeout, "timeout", o.timeout, "")
	fs.DurationVar(&o.wait, "wait", o.wait, "")
	fs.DurationVar(&o.step, "step-timeout", o.step, "")
	fs.BoolVar(&o.json, "json", false, "")
	rest, err := diagParse(fs, args[1:])
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stderr, doctorUsage)
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "sluice doctor %s: %v\n\n%s", check, err, doctorUsage)
		return 2
	}
	req := admin.DoctorRequest{StepTimeoutMS: o.step.Milliseconds()}
	needDomain := check == admin.DoctorConnect || check == admin.DoctorAuth || check == admin.DoctorTLS
	switch {
	case needDomain && len(rest) != 1:
		fmt.Fprintf(stderr, "sluice doctor %s: want exactly one DOMAIN\n\n%s", check, doctorUsage)
		return 2
	case check == admin.DoctorDNSBL && len(rest) != 0:
		fmt.Fprintf(stderr, "sluice doctor %s: takes no arguments, got %q\n", check, rest)
		return 2
	case o.wait <= time.Second || o.step <= 0 || o.timeout <= 0:
		fmt.Fprintf(stderr, "sluice doctor %s: -wait must exceed 1s, -step-timeout and -timeout must be positive\n", check)
		return 2
	}
	if needDomain {
		req.Domain = rest[0]
	}
	if check == admin.DoctorDNS {
		// Any number of domains; the deliverers refuse what is not one.
		req.Domains = rest
	}
	// The deliverers stop their checks in time for the answer to arrive
	// before we give up waiting.
	req.BudgetMS = (o.wait - time.Second).Milliseconds()

	answers, err := doctorAsk(o, check, req)
	if err != nil {
		fmt.Fprintf(stderr, "sluice doctor %s: %v\n", check, err)
		return 1
	}
	failed, err := printDoctor(stdout, check, answers, o.json, diagPainter{on: diagIsTerminal(stdout)})
	if err != nil {
		fmt.Fprintf(stderr, "sluice doctor %s: %v\n", check, err)
		return 1
	}
	if failed {
		return 1
	}
	return 0
}

// diagParse parses flags placed before and after the positional arguments.
func diagParse(fs *flag.FlagSet, args []string) ([]string, error) {
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return rest, nil
		}
		rest = append(rest, args[0])
		args = args[1:]
	}
}

// doctorAsk connects to NATS and gathers every deliverer's answer to the
// check: those discovered within -timeout, waiting -wait for them.
func doctorAsk(o doctorOpts, check string, req admin.DoctorRequest) ([]doctor.Answer, error) {
	opts := []nats.Option{nats.Name("sluice-cli doctor"), nats.Timeout(o.timeout), nats.NoReconnect()}
	if o.creds != "" {
		opts = append(opts, nats.UserCredentials(o.creds))
	}
	nc, err := nats.Connect(o.server, opts...)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to NATS at %s within %s: %v", o.server, o.timeout, err)
	}
	defer nc.Close()

	ctx := context.Background()
	deliverers, err := doctor.Discover(ctx, nc, check, o.timeout)
	if err != nil {
		return nil, err
	}
	return doctor.Ask(ctx, nc, check, req, deliverers, o.wait)
}
