package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/term"
)

const passwdUsage = `usage: sluice passwd [-domains example.com,example.org] [-cost 12] NAME

Prints a line for the ingress's submission credentials file
(ingress.submission.credentials_file): NAME, a bcrypt hash of the password
and, with -domains, the only sender domains NAME may use. The password is
asked for twice on a terminal (not echoed), or read from the first line of
standard input otherwise:

    sluice passwd alice@example.com >> /etc/sluice/users
    echo "$PASSWORD" | sluice passwd -domains example.com alice >> users

The ingress re-reads the file on SIGHUP and when it changes.
`

// minPassword is the shortest password passwd accepts: submission is
// reachable from the Internet, and a short password is guessed.
const minPassword = 12

func runPasswd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sluice passwd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	domains := fs.String("domains", "", "comma-separated sender domains the user may use (default: any)")
	cost := fs.Int("cost", 12, "bcrypt cost (10 to 16)")
	pos, err := parseInterleaved(fs, args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stderr, passwdUsage)
		return 0
	case err != nil:
		fmt.Fprintf(stderr, "sluice passwd: %v\n\n%s", err, passwdUsage)
		return 2
	case len(pos) != 1:
		fmt.Fprintf(stderr, "sluice passwd: want one NAME\n\n%s", passwdUsage)
		return 2
	case *cost < 10 || *cost > 16:
		fmt.Fprintf(stderr, "sluice passwd: -cost %d, want 10 to 16\n", *cost)
		return 2
	}
	name := pos[0]
	if name == "" || strings.ContainsAny(name, ": \t\r\n#") {
		fmt.Fprintf(stderr, "sluice passwd: name %q: must be non-empty, without ':', '#' or white space\n", name)
		return 2
	}
	var doms []string
	for _, d := range strings.Split(*domains, ",") {
		d = strings.TrimSpace(d)
		if d == "" {
			continue
		}
		if strings.ContainsAny(d, ": \t\r\n@,") || !strings.Contains(d, ".") {
			fmt.Fprintf(stderr, "sluice passwd: -domains: %q is not a domain\n", d)
			return 2
		}
		doms = append(doms, strings.ToLower(d))
	}
	pw, err := readPassword(stdin, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "sluice passwd: %v\n", err)
		return 1
	}
	if len(pw) < minPassword {
		fmt.Fprintf(stderr, "sluice passwd: the password has %d characters; want at least %d\n", len(pw), minPassword)
		return 1
	}
	if len(pw) > 72 {
		// bcrypt reads 72 bytes; more would be silently ignored.
		fmt.Fprintf(stderr, "sluice passwd: the password has %d bytes; bcrypt uses at most 72\n", len(pw))
		return 1
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(pw), *cost)
	if err != nil {
		fmt.Fprintf(stderr, "sluice passwd: %v\n", err)
		return 1
	}
	line := name + ":" + string(hash)
	if len(doms) > 0 {
		line += ":" + strings.Join(doms, ",")
	}
	fmt.Fprintln(stdout, line)
	return 0
}

// readPassword asks twice on a terminal, without echo; otherwise it reads
// the first line of stdin.
func readPassword(stdin io.Reader, stderr io.Writer) (string, error) {
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(stderr, "Password: ")
		a, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", err
		}
		fmt.Fprint(stderr, "Again: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", err
		}
		if string(a) != string(b) {
			return "", errors.New("the passwords differ")
		}
		return string(a), nil
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && (err != io.EOF || line == "") {
		return "", fmt.Errorf("reading the password from standard input: %w", errOrEOF(err))
	}
	return strings.TrimRight(line, "\r\n"), nil
}

func errOrEOF(err error) error {
	if err == io.EOF {
		return errors.New("nothing there")
	}
	return err
}
