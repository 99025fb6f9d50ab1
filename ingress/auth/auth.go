// Package auth checks the passwords of submission users (RFC 6409) against
// a credentials file of bcrypt hashes, and provides the SASL PLAIN
// (RFC 4616) and LOGIN mechanisms that the SMTP AUTH command (RFC 4954)
// runs.
//
// The credentials file has one user per line:
//
//	# name:bcrypt-hash[:sender-domain,...]
//	alice@example.com:$2y$10$...:example.com,example.org
//	bob:$2a$10$...
//
// Names are compared case-insensitively. A user with sender domains may
// only use envelope senders in those domains; a user without may use any.
// Lines come from `sluice passwd [-domains D,...] NAME`; hashes from
// `htpasswd -nB`, `mkpasswd -m bcrypt` or
// golang.org/x/crypto/bcrypt. The file is re-read by Reload, and by
// ReloadIfChanged when its modification time or size changed; a file that
// fails to parse leaves the previous users in place.
package auth

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// ErrBadCredentials is returned for an unknown user or a wrong password;
// the two are deliberately indistinguishable.
var ErrBadCredentials = errors.New("auth: bad credentials")

// User is one entry of the credentials file.
type User struct {
	// Name is the login name as written in the file.
	Name string
	// SenderDomains, when not empty, are the only domains the user may
	// send from (compared case-insensitively).
	SenderDomains []string
	hash          []byte
}

// MaySendFrom reports whether the user may use an envelope sender in
// domain. The null sender has no domain and is refused to restricted users.
func (u User) MaySendFrom(domain string) bool {
	if len(u.SenderDomains) == 0 {
		return true
	}
	domain = strings.TrimSuffix(domain, ".")
	for _, d := range u.SenderDomains {
		if domain != "" && strings.EqualFold(d, domain) {
			return true
		}
	}
	return false
}

// Credentials is a reloadable credentials file. It is safe for concurrent
// use.
type Credentials struct {
	path string

	mu    sync.RWMutex
	users map[string]User
	dummy []byte // compared against for unknown users
	stamp fileStamp
}

type fileStamp struct {
	mod  time.Time
	size int64
}

// Load reads the credentials file at path.
func Load(path string) (*Credentials, error) {
	c := &Credentials{path: path}
	if err := c.Reload(); err != nil {
		return nil, err
	}
	return c, nil
}

// Len returns the number of users.
func (c *Credentials) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.users)
}

// Reload re-reads the file. On error the previous users stay in effect.
func (c *Credentials) Reload() error {
	fi, err := os.Stat(c.path)
	if err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	b, err := os.ReadFile(c.path)
	if err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	users, err := parse(b)
	if err != nil {
		return fmt.Errorf("auth: %s: %w", c.path, err)
	}
	dummy, err := dummyHash(users)
	if err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	c.mu.Lock()
	c.users, c.dummy = users, dummy
	c.stamp = fileStamp{fi.ModTime(), fi.Size()}
	c.mu.Unlock()
	return nil
}

// ReloadIfChanged reloads the file when its modification time or size
// differ from the last load, and reports whether it did.
func (c *Credentials) ReloadIfChanged() (bool, error) {
	fi, err := os.Stat(c.path)
	if err != nil {
		return false, fmt.Errorf("auth: %w", err)
	}
	c.mu.RLock()
	same := c.stamp == fileStamp{fi.ModTime(), fi.Size()}
	c.mu.RUnlock()
	if same {
		return false, nil
	}
	return true, c.Reload()
}

// dummyHash returns a hash to compare against when the user does not
// exist, at the highest cost in the file, so that an unknown name costs as
// much time as a wrong password and does not reveal that it is unknown.
func dummyHash(users map[string]User) ([]byte, error) {
	cost := bcrypt.DefaultCost
	if len(users) > 0 {
		cost = bcrypt.MinCost
		for _, u := range users {
			if c, err := bcrypt.Cost(u.hash); err == nil && c > cost {
				cost = c
			}
		}
	}
	return bcrypt.GenerateFromPassword([]byte("sluice-no-such-user"), cost)
}

// Authenticate checks name and password and returns the user.
func (c *Credentials) Authenticate(name, password string) (User, error) {
	c.mu.RLock()
	u, ok := c.users[strings.ToLower(name)]
	hash := u.hash
	if !ok {
		hash = c.dummy
	}
	c.mu.RUnlock()
	if err := bcrypt.CompareHashAndPassword(hash, []byte(password)); err != nil || !ok {
		return User{}, ErrBadCredentials
	}
	return u, nil
}

// parse reads the file's lines; errors name the line.
func parse(b []byte) (map[string]User, error) {
	users := map[string]User{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.Split(line, ":")
		if len(parts) < 2 || len(parts) > 3 {
			return nil, fmt.Errorf("line %d: want name:hash[:domains]", n)
		}
		name, hash := strings.TrimSpace(parts[0]), strings.TrimSpace(parts[1])
		if name == "" {
			return nil, fmt.Errorf("line %d: empty user name", n)
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil {
			return nil, fmt.Errorf("line %d: user %q: not a bcrypt hash: %v", n, name, err)
		}
		key := strings.ToLower(name)
		if _, dup := users[key]; dup {
			return nil, fmt.Errorf("line %d: user %q listed twice", n, name)
		}
		u := User{Name: name, hash: []byte(hash)}
		if len(parts) == 3 {
			for _, d := range strings.Split(parts[2], ",") {
				if d = strings.TrimSuffix(strings.TrimSpace(d), "."); d != "" {
					u.SenderDomains = append(u.SenderDomains, d)
				}
			}
		}
		users[key] = u
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return users, nil
}
