package capture

import (
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

func TestCapturesAndScriptsReplies(t *testing.T) {
	s, err := Listen("127.0.0.1:0", Options{Dir: t.TempDir(), Rcpt: func(rcpt string, seen int) *smtp.SMTPError {
		if rcpt == "later@x.test" && seen == 0 {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 0}, Message: "try later"}
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = send(s.Addr, "later@x.test", "Subject: 1\r\n\r\nhi\r\n")
	var se *smtp.SMTPError
	if err == nil || !asSMTP(err, &se) || se.Code != 451 {
		t.Fatalf("first attempt: want 451, got %v", err)
	}
	if err := send(s.Addr, "later@x.test", "Subject: 2\r\n\r\nhi\r\n"); err != nil {
		t.Fatal(err)
	}
	ms, err := s.Wait(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if ms[0].From != "a@x.test" || ms[0].To[0] != "later@x.test" || !strings.Contains(string(ms[0].Data), "Subject: 2") {
		t.Fatalf("captured %+v", ms[0])
	}
}

func asSMTP(err error, target **smtp.SMTPError) bool {
	e, ok := err.(*smtp.SMTPError)
	if ok {
		*target = e
	}
	return ok
}

func send(addr, rcpt, data string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.SendMail("a@x.test", []string{rcpt}, strings.NewReader(data))
}
