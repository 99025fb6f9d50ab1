// Package recipients decides whether a recipient in one of the domains the
// ingress accepts mail for (as inbound MX) exists, so that an unknown user
// is refused during the SMTP dialogue (550 5.1.1) instead of being accepted
// and bounced later: a bounce to a forged sender is backscatter.
//
// The list file has one entry per line:
//
//	# address, or @domain to accept every local part of that domain
//	alice@example.com
//	postmaster@example.com
//	@lists.example.com
//
// Entries are compared case-insensitively. With a delimiter such as "+",
// "alice+tag@example.com" matches the entry "alice@example.com" (Postfix's
// recipient_delimiter). Local parts that carry sender-specified routing
// ("%", "!" or "@" in the local part: user%other@, other!user@,
// "user@other"@) never match, whatever the list says, so a recipient in an
// accepted domain can never make Sluice relay onwards. The file is re-read
// by Reload, and by ReloadIfChanged when its modification time or size
// changed; a file that fails to parse leaves the previous list in place.
package recipients

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// List is a reloadable recipient list. It is safe for concurrent use.
type List struct {
	path      string
	delimiter string

	mu        sync.RWMutex
	addresses map[string]struct{}
	domains   map[string]struct{} // catch-all entries
	stamp     fileStamp
}

type fileStamp struct {
	mod  time.Time
	size int64
}

// Load reads the list at path. delimiter is the subaddress separator ("" for
// none).
func Load(path, delimiter string) (*List, error) {
	l := &List{path: path, delimiter: delimiter}
	if err := l.Reload(); err != nil {
		return nil, err
	}
	return l, nil
}

// Reload re-reads the file. On error the previous list stays in effect.
func (l *List) Reload() error {
	fi, err := os.Stat(l.path)
	if err != nil {
		return fmt.Errorf("recipients: %w", err)
	}
	b, err := os.ReadFile(l.path)
	if err != nil {
		return fmt.Errorf("recipients: %w", err)
	}
	addrs, domains, err := parse(b)
	if err != nil {
		return fmt.Errorf("recipients: %s: %w", l.path, err)
	}
	l.mu.Lock()
	l.addresses, l.domains = addrs, domains
	l.stamp = fileStamp{fi.ModTime(), fi.Size()}
	l.mu.Unlock()
	return nil
}

// ReloadIfChanged reloads the file when its modification time or size
// differ from the last load, and reports whether it did.
func (l *List) ReloadIfChanged() (bool, error) {
	fi, err := os.Stat(l.path)
	if err != nil {
		return false, fmt.Errorf("recipients: %w", err)
	}
	l.mu.RLock()
	same := l.stamp == fileStamp{fi.ModTime(), fi.Size()}
	l.mu.RUnlock()
	if same {
		return false, nil
	}
	return true, l.Reload()
}

// Len returns the number of entries.
func (l *List) Len() int {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return len(l.addresses) + len(l.domains)
}

// Has reports whether local@domain is a known recipient.
func (l *List) Has(local, domain string) bool {
	if SenderRouted(local) {
		return false
	}
	local = strings.ToLower(local)
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	l.mu.RLock()
	defer l.mu.RUnlock()
	if _, ok := l.domains[domain]; ok {
		return true
	}
	if _, ok := l.addresses[local+"@"+domain]; ok {
		return true
	}
	if l.delimiter != "" {
		if base, _, ok := strings.Cut(local, l.delimiter); ok && base != "" {
			_, ok := l.addresses[base+"@"+domain]
			return ok
		}
	}
	return false
}

// SenderRouted reports whether a local part asks for sender-specified
// routing: the "percent hack" (user%host), UUCP bang paths (host!user), or a
// quoted local part holding another address ("user@host"). RFC 5321 §3.6.1
// lets a server refuse these, and an MX must, because the host behind it
// may still honour them.
func SenderRouted(local string) bool {
	return strings.ContainsAny(local, "%!@")
}

func parse(b []byte) (map[string]struct{}, map[string]struct{}, error) {
	addrs, domains := map[string]struct{}{}, map[string]struct{}{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.ToLower(line)
		at := strings.LastIndexByte(line, '@')
		switch {
		case at < 0 || at == len(line)-1 || strings.ContainsAny(line, " \t<>"):
			return nil, nil, fmt.Errorf("line %d: %q is not an address or @domain", n, line)
		case at == 0:
			domains[strings.TrimSuffix(line[1:], ".")] = struct{}{}
		default:
			addrs[strings.TrimSuffix(line, ".")] = struct{}{}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, nil, err
	}
	return addrs, domains, nil
}
