package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	api "github.com/sluice-mta/sluice/proto/admin"
)

const queueUsage = `usage: sluice queue <command> [flags] [ID...]

commands:
  list        queued, deferred and held jobs, oldest first (like mailq / postqueue -j)
  show ID     one message or job: envelope, recipients, every attempt, next attempt, trace id
  log ID      the history of a message or job, event by event
  stats       age by destination (like qshape), totals, delivery delay percentiles
  hold        put jobs on hold: they are not delivered until released
  release     take jobs off hold and try them now (-keep-schedule: a deferred job keeps its next-attempt time)
  retry       make deferred jobs due now
  delete      remove jobs (--bounce: send the sender a failure DSN)
  prioritize  move jobs to another class: prioritize high|normal|bulk ID... or filters

IDs are queue ids (every job of the message) or job ids (<queue id>-<n>).
Filters (list, stats and the changes): -state ready,active,deferred,held
  -domain D -sender ADDR|@DOMAIN|<> -recipient ADDR|@DOMAIN -priority high,normal,bulk
  -reason dns,connect,tls,remote,timeout,throttled,... -min-age 1h -max-age 30m
Changes take IDs or filters (-all for every job) and -dry-run to count what would change.
Output: aligned columns; -json for JSON Lines.
Global flags: -server URL (default $SLUICE_NATS_URL or nats://127.0.0.1:4222), -creds FILE, -timeout 5s.
`

// queueOpts are the flags every queue command takes.
type queueOpts struct {
	server  string
	creds   string
	timeout time.Duration
	wait    time.Duration
	json    bool
	filter  api.QueueFilter
	states  string
	classes string
	reasons string
}

func (o *queueOpts) global(fs *flag.FlagSet) {
	def := os.Getenv("SLUICE_NATS_URL")
	if def == "" {
		def = "nats://127.0.0.1:4222"
	}
	fs.StringVar(&o.server, "server", def, "NATS server URL(s), comma-separated")
	fs.StringVar(&o.creds, "creds", os.Getenv("SLUICE_NATS_CREDS"), "NATS credentials file")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "how long to wait for the service to answer")
	fs.BoolVar(&o.json, "json", false, "print JSON Lines")
}

func (o *queueOpts) filters(fs *flag.FlagSet) {
	fs.StringVar(&o.states, "state", "", "states: ready, active, deferred, held (comma-separated)")
	fs.StringVar(&o.filter.Domain, "domain", "", "destination domain")
	fs.StringVar(&o.filter.Sender, "sender", "", "sender address, @domain, or <> for the null sender")
	fs.StringVar(&o.filter.Recipient, "recipient", "", "recipient address or @domain")
	fs.StringVar(&o.classes, "priority", "", "priority classes: high, normal, bulk (comma-separated)")
	fs.StringVar(&o.reasons, "reason", "", "deferral reasons: dns, connect, tls, remote, timeout, throttled, ...")
	fs.StringVar(&o.filter.MinAge, "min-age", "", "only jobs older than this (e.g. 1h)")
	fs.StringVar(&o.filter.MaxAge, "max-age", "", "only jobs younger than this (e.g. 30m)")
}

// finish completes the filter from the comma-separated flags.
func (o *queueOpts) finish() {
	o.filter.States = splitList(o.states)
	o.filter.Priorities = splitList(o.classes)
	o.filter.Reasons = splitList(o.reasons)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// errUsage marks errors that deserve exit status 2.
var errUsage = errors.New("usage")

type usageError struct{ msg string }

func (e *usageError) Error() string   { return e.msg }
func (e *usageError) Is(t error) bool { return t == errUsage }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// parseInterleaved parses flags that may come before, between or after the
// positional arguments ("hold ID -dry-run ID2"), and returns the
// positional ones.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// runQueue implements "sluice queue".
func runQueue(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	// "sluice queue -server URL list" as well as "sluice -server URL queue list".
	args = globalFlagsLast(args)
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, queueUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, rest := args[0], args[1:]
	var err error
	switch cmd {
	case "list", "ls":
		err = queueList(rest, stdout, stderr)
	case "show":
		err = queueShow(rest, stdout, stderr)
	case "log":
		err = queueLog(rest, stdout, stderr)
	case "stats", "shape":
		err = queueStats(rest, stdout, stderr)
	case "hold", "release", "retry", "delete", "prioritize":
		err = queueAction(cmd, rest, stdout, stderr)
	default:
		fmt.Fprintf(stderr, "sluice queue: unknown command %q\n\n%s", cmd, queueUsage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "sluice queue %s: %v\n", cmd, err)
		return 2
	case errors.Is(err, errSilent):
		return 1
	}
	fmt.Fprintf(stderr, "sluice queue %s: %v\n", cmd, err)
	return 1
}

// errSilent is a failure already explained on stderr.
var errSilent = errors.New("failed")

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("sluice queue "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// flagErr turns a flag parsing error into a usage error (the flag package
// has printed it and the usage already).
func flagErr(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	return &usageError{err.Error()}
}
