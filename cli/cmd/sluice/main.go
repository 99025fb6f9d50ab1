// Command sluice is the operator's tool. It talks to the running services
// over NATS request/reply (their admin APIs, discoverable with
// `nats micro ls`), never to their streams or internals, except for
// `sluice headers`, which only reads a message file, and `sluice cluster`,
// which asks JetStream how it holds the streams (leaders, replicas), never
// what is in them.
//
//	sluice queue  list|show|stats|log|hold|release|delete|retry|prioritize ...
//	sluice doctor dns|dnsbl|connect|auth ...
//	sluice headers [FILE]
//	sluice cluster
//	sluice shaping show|suspend|resume ...
//	sluice passwd NAME
package main

import (
	"fmt"
	"io"
	"os"
	"strings"
)

const usage = `usage: sluice <command> [arguments]

commands:
  queue    see and steer the queue (list, show, stats, log, hold, release, delete, retry, prioritize)
  doctor   check DNS, blacklists, connectivity and SPF/DKIM/DMARC from every deliverer
  headers  analyse a message's Received headers, authentication results and DSN content
  cluster  each stream's and consumer's JetStream leader and replicas: ok, degraded or no leader
  shaping  the deliverers' limits per receiving site: connections, concurrency, suspensions
  passwd   make a line of the submission credentials file (a bcrypt hash)

Global flags (before or after the command): -server nats://host:4222, -creds FILE, -timeout 5s.
Run "sluice <command> -h" for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run dispatches to a command and returns the exit status: 0 success, 1 the
// command failed, 2 bad usage.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	args = globalFlagsLast(args)
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	switch args[0] {
	case "queue":
		return runQueue(args[1:], stdin, stdout, stderr)
	case "doctor":
		return runDoctor(args[1:], stdin, stdout, stderr)
	case "headers":
		return runHeaders(args[1:], stdin, stdout, stderr)
	case "cluster":
		return runCluster(args[1:], stdout, stderr)
	case "shaping":
		return runShaping(args[1:], stdout, stderr)
	case "passwd":
		return runPasswd(args[1:], stdin, stdout, stderr)
	}
	fmt.Fprintf(stderr, "sluice: unknown command %q\n\n%s", args[0], usage)
	return 2
}

// globalFlagsLast moves the global flags given before the command
// ("sluice -server URL doctor dns") to the end of the arguments, where
// every command's own flag parsing accepts them.
func globalFlagsLast(args []string) []string {
	var global []string
	for len(args) > 0 {
		name, _, hasValue := strings.Cut(strings.TrimLeft(args[0], "-"), "=")
		if !strings.HasPrefix(args[0], "-") || (name != "server" && name != "creds" && name != "timeout") {
			break
		}
		if hasValue || len(args) == 1 {
			global, args = append(global, args[0]), args[1:]
			continue
		}
		global, args = append(global, args[0], args[1]), args[2:]
	}
	return append(args, global...)
}
