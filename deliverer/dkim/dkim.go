// Package dkim signs outgoing mail with DomainKeys Identified Mail (RFC 6376)
// using github.com/emersion/go-msgauth/dkim. Keys are RSA (RFC 8301: 1024
// bits at the very least, 2048 recommended) or Ed25519 (RFC 8463), read from
// PEM files, and configured per signing domain and selector.
//
// Which domain signs: the domain of the From header field when a key is
// configured for it or for one of its parent domains (a parent's signature
// is aligned under DMARC's relaxed mode, RFC 7489 §3.1.1), else the domain of
// the envelope sender, else nobody and the message goes out unsigned. Every
// key of the chosen domain signs, so an RSA and an Ed25519 key under two
// selectors give two DKIM-Signature fields, which is how Ed25519 is deployed
// while receivers still learn it (RFC 8463 §1).
//
// Signing needs the whole message before the first byte is sent: the
// signature covers a hash of the body and goes in front of it, in the header.
// The deliverer streams bodies of any size from JetStream, so Sign spools
// the message once, in memory up to a limit (1 MiB by default, which holds
// most mail) and in a temporary file beyond it, hashing while it spools; the
// returned Signed reads the new fields and then the spooled message. Reading
// the body a second time from JetStream instead would double the load on
// the queue for every signed message and could not guarantee the same bytes.
package dkim

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"os"
	"strings"

	msgdkim "github.com/emersion/go-msgauth/dkim"
)

// KeyConfig names one signing key in the configuration:
//
//	dkim:
//	  - {domain: example.com, selector: s2025, key_file: /etc/sluice/dkim/example.com.s2025.pem}
type KeyConfig struct {
	// Domain is the signing domain (the d= tag).
	Domain string `yaml:"domain"`
	// Selector is the s= tag: the public key is published at
	// <selector>._domainkey.<domain> (RFC 6376 §3.6.2.1).
	Selector string `yaml:"selector"`
	// KeyFile is a PEM file with the private key: "RSA PRIVATE KEY"
	// (PKCS #1) or "PRIVATE KEY" (PKCS #8, RSA or Ed25519).
	KeyFile string `yaml:"key_file"`
}

// Key is a loaded signing key.
type Key struct {
	Domain   string
	Selector string
	Signer   crypto.Signer
}

// minRSABits is RFC 8301 §3.2's floor: verifiers must not accept less.
const minRSABits = 1024

// LoadKey reads and parses the key file of kc.
func LoadKey(kc KeyConfig) (*Key, error) {
	b, err := os.ReadFile(kc.KeyFile)
	if err != nil {
		return nil, err
	}
	return ParseKey(kc.Domain, kc.Selector, b)
}

// ParseKey parses a PEM private key for domain and selector.
func ParseKey(domain, selector string, pemBytes []byte) (*Key, error) {
	domain = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(domain), "."))
	if domain == "" || strings.ContainsAny(domain, " \t@") {
		return nil, fmt.Errorf("dkim: %q is not a domain", domain)
	}
	if selector == "" || strings.ContainsAny(selector, " \t@;") {
		return nil, fmt.Errorf("dkim: %q is not a selector", selector)
	}
	blk, _ := pem.Decode(pemBytes)
	if blk == nil {
		return nil, errors.New("dkim: no PEM block in the key file")
	}
	var key any
	var err error
	switch blk.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	default:
		return nil, fmt.Errorf("dkim: PEM block %q, want \"RSA PRIVATE KEY\" or \"PRIVATE KEY\"", blk.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("dkim: %w", err)
	}
	var signer crypto.Signer
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("dkim: RSA key of %d bits, RFC 8301 requires at least %d (use 2048)", k.N.BitLen(), minRSABits)
		}
		signer = k
	case ed25519.PrivateKey:
		signer = k
	default:
		return nil, fmt.Errorf("dkim: %T keys are not supported, use RSA or Ed25519", key)
	}
	return &Key{Domain: domain, Selector: selector, Signer: signer}, nil
}

// Algorithm is the k= tag of the key record: "rsa" or "ed25519".
func (k *Key) Algorithm() string {
	if _, ok := k.Signer.Public().(ed25519.PublicKey); ok {
		return "ed25519"
	}
	return "rsa"
}

// PublicKeyData is the p= tag of the key record: the DER SubjectPublicKeyInfo
// of an RSA key (RFC 6376 §3.6.1), or the raw 32 bytes of an Ed25519 key (RFC
// 8463 §4.2), in base64.
func (k *Key) PublicKeyData() string {
	switch pub := k.Signer.Public().(type) {
	case ed25519.PublicKey:
		return base64.StdEncoding.EncodeToString(pub)
	default:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			// Only RSA and Ed25519 keys get here, and both marshal.
			return ""
		}
		return base64.StdEncoding.EncodeToString(der)
	}
}

// RecordName is where the public key is published.
func (k *Key) RecordName() string { return k.Selector + "._domainkey." + k.Domain }

// Record is the TXT record to publish at RecordName.
func (k *Key) Record() string {
	return "v=DKIM1; k=" + k.Algorithm() + "; p=" + k.PublicKeyData()
}

// SignedHeaders are the fields a signature covers: RFC 6376 §5.4.1's
// recommendation. From, Subject, Date, To and Cc appear twice, which also
// signs their absence (§8.15): a second From added on the way, which some
// clients would display, breaks the signature.
var SignedHeaders = []string{
	"From", "From", "Reply-To", "Subject", "Subject", "Date", "Date", "To", "To", "Cc", "Cc",
	"Message-ID", "In-Reply-To", "References", "MIME-Version", "Content-Type",
	"Content-Transfer-Encoding", "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post",
	"Resent-Date", "Resent-From", "Resent-To", "Resent-Cc", "Sender",
}

// Options tune a Signer.
type Options struct {
	// MemoryLimit is how much of a message is spooled in memory before
	// the rest goes to a temporary file; 0 means 1 MiB.
	MemoryLimit int
	// SpoolDir holds the temporary files; "" is os.TempDir().
	SpoolDir string
}

// Signer signs messages with the configured keys. It is safe for concurrent
// use. A Signer without keys passes messages through unsigned.
type Signer struct {
	keys map[string][]*Key // by lower-case domain, in configuration order
	opts Options
}

// NewSigner returns a signer for keys.
func NewSigner(keys []*Key, opts Options) *Signer {
	if opts.MemoryLimit <= 0 {
		opts.MemoryLimit = 1 << 20
	}
	s := &Signer{keys: map[string][]*Key{}, opts: opts}
	for _, k := range keys {
		s.keys[k.Domain] = append(s.keys[k.Domain], k)
	}
	return s
}

// Load loads every configured key.
func Load(cfgs []KeyConfig, opts Options) (*Signer, error) {
	keys := make([]*Key, 0, len(cfgs))
	for i, kc := range cfgs {
		k, err := LoadKey(kc)
		if err != nil {
			return nil, fmt.Errorf("dkim[%d] (%s): %w", i, kc.KeyFile, err)
		}
		keys = append(keys, k)
	}
	return NewSigner(keys, opts), nil
}

// Keys returns the keys configured for exactly domain.
func (s *Signer) Keys(domain string) []*Key {
	return s.keys[strings.ToLower(strings.TrimSuffix(domain, "."))]
}

// Empty reports whether the signer has no keys.
func (s *Signer) Empty() bool { return len(s.keys) == 0 }

// KeysFor finds the keys that sign for domain: its own, else those of its
// closest parent domain that has some.
func (s *Signer) KeysFor(domain string) []*Key {
	d := strings.ToLower(strings.TrimSuffix(domain, "."))
	for d != "" {
		if ks := s.keys[d]; len(ks) > 0 {
			return ks
		}
		_, rest, ok := strings.Cut(d, ".")
		if !ok || !strings.Contains(rest, ".") {
			// Never sign with a key configured for a bare top-level domain.
			break
		}
		d = rest
	}
	return nil
}

// Signed is a message ready to send: the DKIM-Signature fields followed by
// the message. Close releases the spool.
type Signed struct {
	io.Reader
	// Domain is the d= of the signatures, "" when unsigned.
	Domain string
	// Selectors are the s= of the signatures, in order.
	Selectors []string
	// Added is how many bytes the signatures add to the message.
	Added int64

	spool *spool
}

// Close removes the spool's temporary file, if any.
func (s *Signed) Close() error {
	if s.spool == nil {
		return nil
	}
	return s.spool.Close()
}

// Sign reads the whole message from r and returns it signed for its From
// domain or, failing that, for the domain of envelopeFrom. When no key
// applies the message is returned unsigned (Domain ""); the caller still
// closes it. An error means the message could not be read or spooled.
func (s *Signer) Sign(r io.Reader, envelopeFrom string) (*Signed, error) {
	sp := newSpool(s.opts.MemoryLimit, s.opts.SpoolDir)
	if _, err := io.Copy(sp, r); err != nil {
		sp.Close()
		return nil, fmt.Errorf("dkim: reading the message: %w", err)
	}
	out := &Signed{spool: sp}
	var keys []*Key
	domain := ""
	if !s.Empty() {
		domain = fromDomain(sp.reader())
		keys = s.KeysFor(domain)
		if len(keys) == 0 {
			_, domain, _ = strings.Cut(envelopeFrom, "@")
			keys = s.KeysFor(domain)
		}
	}
	if len(keys) == 0 {
		out.Reader = sp.reader()
		return out, nil
	}
	sigs, err := signAll(keys, sp.reader())
	if err != nil {
		sp.Close()
		return nil, err
	}
	out.Domain = keys[0].Domain
	for _, k := range keys {
		out.Selectors = append(out.Selectors, k.Selector)
	}
	out.Added = int64(len(sigs))
	out.Reader = io.MultiReader(strings.NewReader(sigs), sp.reader())
	return out, nil
}

// signAll computes one signature per key in a single pass over msg and
// returns the DKIM-Signature fields, each ending in CRLF.
func signAll(keys []*Key, msg io.Reader) (string, error) {
	signers := make([]*msgdkim.Signer, 0, len(keys))
	writers := make([]io.Writer, 0, len(keys))
	closeAll := func() {
		for _, s := range signers {
			_ = s.Close()
		}
	}
	for _, k := range keys {
		s, err := msgdkim.NewSigner(&msgdkim.SignOptions{
			Domain:   k.Domain,
			Selector: k.Selector,
			Signer:   k.Signer,
			// relaxed/relaxed survives the re-folding and trailing white
			// space changes that relays make (RFC 6376 §3.4).
			HeaderCanonicalization: msgdkim.CanonicalizationRelaxed,
			BodyCanonicalization:   msgdkim.CanonicalizationRelaxed,
			HeaderKeys:             SignedHeaders,
		})
		if err != nil {
			closeAll()
			return "", fmt.Errorf("dkim: %s: %w", k.RecordName(), err)
		}
		signers = append(signers, s)
		writers = append(writers, s)
	}
	if _, err := io.Copy(io.MultiWriter(writers...), msg); err != nil {
		closeAll()
		return "", fmt.Errorf("dkim: hashing the message: %w", err)
	}
	var b strings.Builder
	for i, s := range signers {
		if err := s.Close(); err != nil {
			closeAll()
			return "", fmt.Errorf("dkim: signing with %s: %w", keys[i].RecordName(), err)
		}
		b.WriteString(s.Signature())
	}
	return b.String(), nil
}

// fromDomain returns the domain of the first address of the From field, ""
// when the header cannot be parsed.
func fromDomain(msg io.Reader) string {
	m, err := mail.ReadMessage(io.LimitReader(msg, 1<<20))
	if err != nil {
		return ""
	}
	from, err := m.Header.AddressList("From")
	if err != nil || len(from) == 0 {
		return ""
	}
	_, d, _ := strings.Cut(from[0].Address, "@")
	return d
}

// spool keeps a message in memory up to limit and the rest in a file.
type spool struct {
	limit int
	dir   string
	mem   bytes.Buffer
	file  *os.File
}

func newSpool(limit int, dir string) *spool { return &spool{limit: limit, dir: dir} }

func (s *spool) Write(p []byte) (int, error) {
	if s.file == nil && s.mem.Len()+len(p) <= s.limit {
		return s.mem.Write(p)
	}
	if s.file == nil {
		f, err := os.CreateTemp(s.dir, "sluice-dkim-*")
		if err != nil {
			return 0, err
		}
		s.file = f
	}
	return s.file.Write(p)
}

// reader returns a fresh reader over everything written.
func (s *spool) reader() io.Reader {
	mem := bytes.NewReader(s.mem.Bytes())
	if s.file == nil {
		return mem
	}
	size, err := s.file.Seek(0, io.SeekCurrent)
	if err != nil {
		return io.MultiReader(mem, errReader{err})
	}
	return io.MultiReader(mem, io.NewSectionReader(s.file, 0, size))
}

func (s *spool) Close() error {
	if s.file == nil {
		return nil
	}
	name := s.file.Name()
	err := s.file.Close()
	if rerr := os.Remove(name); err == nil {
		err = rerr
	}
	s.file = nil
	return err
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }
