package auth

import (
	"errors"

	"github.com/emersion/go-sasl"
)

// Mechanism names as the EHLO AUTH keyword lists them.
const (
	Plain = "PLAIN"
	Login = "LOGIN"
)

// ErrMalformed is a SASL exchange whose messages do not follow the
// mechanism, as opposed to one with wrong credentials.
var ErrMalformed = errors.New("auth: malformed SASL response")

// Checker verifies a name and password; Credentials.Authenticate is one.
type Checker func(name, password string) error

// NewPlain returns a server for RFC 4616 PLAIN. An authorization identity
// other than the user's own is refused: users cannot act for each other.
func NewPlain(check Checker) sasl.Server {
	return sasl.NewPlainServer(func(identity, name, password string) error {
		if identity != "" && identity != name {
			return ErrBadCredentials
		}
		return check(name, password)
	})
}

// NewLogin returns a server for the LOGIN mechanism (draft-murchison-sasl-
// login): the server prompts "Username:" then "Password:", and the client
// may send the user name as the initial response. go-sasl has no server
// side for it, and mail clients still use it widely.
func NewLogin(check Checker) sasl.Server {
	return &loginServer{check: check}
}

type loginServer struct {
	step  int
	name  string
	check Checker
}

func (s *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch s.step {
	case 0:
		if response == nil {
			s.step = 1
			return []byte("Username:"), false, nil
		}
		s.name, s.step = string(response), 2
		return []byte("Password:"), false, nil
	case 1:
		s.name, s.step = string(response), 2
		return []byte("Password:"), false, nil
	case 2:
		s.step = 3
		return nil, true, s.check(s.name, string(response))
	}
	return nil, true, ErrMalformed
}
