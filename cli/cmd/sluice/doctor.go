package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

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

// runDoctor implements "sluice doctor": it discovers the deliverers, asks
// every one of them to run the check, and prints their answers.
//
// How the answers are gathered: the doctor endpoints have no queue group,
// so one request reaches every deliverer. The CLI first lists the
// instances of the sluice-deliverer micro service ($SRV.INFO, gathering
// replies until 300 ms pass without a new one) to know whom to expect,
// then publishes the request with a reply inbox and collects answers until
// each instance answered or -wait passed. An instance that did not answer
// gets a row that says so: a silent deliverer is a finding, not a detail.
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

// doctorInstance is a discovered deliverer.
type doctorInstance struct {
	ID       string
	Instance string
	Hostname string
}

// doctorAnswer is one deliverer's answer: Raw holds the report JSON, Err
// what went wrong instead.
type doctorAnswer struct {
	doctorInstance
	Raw json.RawMessage
	Err string
}

// quietPeriod ends discovery once no new instance has answered for it.
const quietPeriod = 300 * time.Millisecond

func doctorAsk(o doctorOpts, check string, req admin.DoctorRequest) ([]doctorAnswer, error) {
	opts := []nats.Option{nats.Name("sluice-cli doctor"), nats.Timeout(o.timeout), nats.NoReconnect()}
	if o.creds != "" {
		opts = append(opts, nats.UserCredentials(o.creds))
	}
	nc, err := nats.Connect(o.server, opts...)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to NATS at %s within %s: %v", o.server, o.timeout, err)
	}
	defer nc.Close()

	instances, err := doctorDiscover(nc, check, o.timeout)
	if err != nil {
		return nil, err
	}
	data, _ := json.Marshal(req)
	inbox := nats.NewInbox()
	ch := make(chan *nats.Msg, 64)
	sub, err := nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(admin.DoctorSubject(check), inbox, data); err != nil {
		return nil, err
	}
	got := map[string]doctorAnswer{}
	var strays []doctorAnswer
	deadline := time.NewTimer(o.wait)
	defer deadline.Stop()
wait:
	for len(got)+len(strays) < len(instances) {
		select {
		case m := <-ch:
			a := decodeAnswer(m)
			if _, known := instances[a.ID]; known {
				a.doctorInstance = instances[a.ID]
				got[a.ID] = a
			} else {
				// A deliverer that started after discovery: show it too.
				strays = append(strays, a)
			}
		case <-deadline.C:
			break wait
		}
	}
	var out []doctorAnswer
	for id, in := range instances {
		a, ok := got[id]
		if !ok {
			a = doctorAnswer{doctorInstance: in, Err: fmt.Sprintf("no answer within %s", o.wait)}
		}
		out = append(out, a)
	}
	out = append(out, strays...)
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Instance != out[j].Instance {
			return out[i].Instance < out[j].Instance
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// doctorDiscover lists the deliverers that serve the check.
func doctorDiscover(nc *nats.Conn, check string, timeout time.Duration) (map[string]doctorInstance, error) {
	subj, err := micro.ControlSubject(micro.InfoVerb, admin.DelivererService, "")
	if err != nil {
		return nil, err
	}
	inbox := nats.NewInbox()
	ch := make(chan *nats.Msg, 64)
	sub, err := nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(subj, inbox, nil); err != nil {
		return nil, err
	}
	found := map[string]doctorInstance{}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	quiet := time.NewTimer(timeout)
	defer quiet.Stop()
	want := admin.DoctorSubject(check)
	var noResponders bool
loop:
	for {
		select {
		case m := <-ch:
			if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
				noResponders = true
				break loop
			}
			var info micro.Info
			if json.Unmarshal(m.Data, &info) != nil {
				continue
			}
			for _, e := range info.Endpoints {
				if e.Subject == want {
					found[info.ID] = doctorInstance{ID: info.ID, Instance: info.Metadata[admin.MetadataInstance], Hostname: info.Metadata[admin.MetadataHostname]}
				}
			}
			quiet.Reset(quietPeriod)
		case <-quiet.C:
			break loop
		case <-deadline.C:
			break loop
		}
	}
	if len(found) == 0 {
		why := "is any deliverer running? no reply"
		if noResponders {
			why = "is any deliverer running? nats: no responders"
		}
		return nil, fmt.Errorf("no answer from %s within %s (%s)", admin.DelivererService, timeout, why)
	}
	return found, nil
}

// decodeAnswer reads a reply: a micro error, or a report whose deliverer
// identity says who answered.
func decodeAnswer(m *nats.Msg) doctorAnswer {
	var head struct {
		Deliverer admin.DelivererIdentity `json:"deliverer"`
	}
	// Error replies carry the identity as their body too.
	jerr := json.Unmarshal(m.Data, &head)
	d := head.Deliverer
	a := doctorAnswer{doctorInstance: doctorInstance{ID: d.ServiceID, Instance: d.Instance, Hostname: d.Hostname}}
	switch code := m.Header.Get(micro.ErrorCodeHeader); {
	case code != "":
		a.Err = fmt.Sprintf("error %s: %s", code, m.Header.Get(micro.ErrorHeader))
	case jerr != nil:
		a.Err = "unreadable answer: " + jerr.Error()
	default:
		a.Raw = m.Data
	}
	return a
}
