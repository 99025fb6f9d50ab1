// Package dnstest is an in-process DNS server (miekg/dns) on loopback that
// serves records a test sets, and fails on demand. Tests of every module use
// it instead of a mock resolver, so the real DNS client code is exercised.
package dnstest

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Server answers queries from its record set. Unknown names get NXDOMAIN;
// known names without records of the asked type get NOERROR with no answer.
type Server struct {
	Addr string // host:port, UDP and TCP

	mu       sync.Mutex
	records  map[string][]dns.RR // by lower-case FQDN
	servfail map[string]bool
	drop     map[string]bool
	secure   map[string]bool
	queries  int

	udp, tcp *dns.Server
}

// Start starts a server that stops when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// Listen starts a server on addr (port 0 picks one) for UDP and TCP.
func Listen(addr string) (*Server, error) {
	s := &Server{records: map[string][]dns.RR{}, servfail: map[string]bool{}, drop: map[string]bool{}, secure: map[string]bool{}}
	// UDP and TCP must share a port number; with port 0 the one the kernel
	// picks for UDP may be taken for TCP, so try a few times.
	var pc net.PacketConn
	var ln net.Listener
	var err error
	for try := 0; try < 20; try++ {
		pc, err = net.ListenPacket("udp", addr)
		if err != nil {
			return nil, err
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		if !strings.HasSuffix(addr, ":0") {
			return nil, err
		}
	}
	if err != nil {
		return nil, err
	}
	s.Addr = pc.LocalAddr().String()
	h := dns.HandlerFunc(s.serve)
	s.udp = &dns.Server{PacketConn: pc, Handler: h}
	s.tcp = &dns.Server{Listener: ln, Handler: h}
	started := make(chan struct{}, 2)
	s.udp.NotifyStartedFunc = func() { started <- struct{}{} }
	s.tcp.NotifyStartedFunc = func() { started <- struct{}{} }
	go s.udp.ActivateAndServe()
	go s.tcp.ActivateAndServe()
	<-started
	<-started
	return s, nil
}

// Close stops the server.
func (s *Server) Close() {
	s.udp.Shutdown()
	s.tcp.Shutdown()
}

// Add adds records in zone-file syntax, e.g. "example.test. 300 IN MX 10 mx.example.test.".
func (s *Server) Add(rrs ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, z := range rrs {
		rr, err := dns.NewRR(z)
		if err != nil {
			return err
		}
		name := strings.ToLower(rr.Header().Name)
		s.records[name] = append(s.records[name], rr)
	}
	return nil
}

// Remove removes every record of name.
func (s *Server) Remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.records, dns.Fqdn(strings.ToLower(name)))
}

// MustAdd is Add for tests.
func (s *Server) MustAdd(t testing.TB, rrs ...string) {
	t.Helper()
	if err := s.Add(rrs...); err != nil {
		t.Fatal(err)
	}
}

// ServFail makes queries for name answer SERVFAIL (true) or normally (false).
func (s *Server) ServFail(name string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.servfail[dns.Fqdn(strings.ToLower(name))] = on
}

// Drop makes queries for name go unanswered, so the client times out.
func (s *Server) Drop(name string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drop[dns.Fqdn(strings.ToLower(name))] = on
}

// Secure makes answers for name (records or their absence) authenticated
// (true), as a validating resolver says with the AD bit (RFC 4035 §3.2.3)
// to a query that sets AD or DO, or not (false, the default).
func (s *Server) Secure(name string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.secure[dns.Fqdn(strings.ToLower(name))] = on
}

// Queries returns how many queries the server has answered or dropped.
func (s *Server) Queries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries
}

func (s *Server) serve(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	s.mu.Lock()
	s.queries++
	drop, fail, secure := s.drop[name], s.servfail[name], s.secure[name]
	rrs, known := s.records[name]
	s.mu.Unlock()
	if drop {
		return
	}
	if fail {
		m.Rcode = dns.RcodeServerFailure
		w.WriteMsg(m)
		return
	}
	if opt := req.IsEdns0(); secure && (req.AuthenticatedData || opt != nil && opt.Do()) {
		m.AuthenticatedData = true
	}
	if !known {
		m.Rcode = dns.RcodeNameError
		w.WriteMsg(m)
		return
	}
	for _, rr := range rrs {
		if rr.Header().Rrtype == q.Qtype || q.Qtype == dns.TypeANY {
			c := dns.Copy(rr)
			c.Header().Name = q.Name
			m.Answer = append(m.Answer, c)
		} else if rr.Header().Rrtype == dns.TypeCNAME {
			m.Answer = append(m.Answer, dns.Copy(rr))
		}
	}
	w.WriteMsg(m)
}

// Timeout is a client timeout short enough for tests of dropped queries.
const Timeout = 500 * time.Millisecond
