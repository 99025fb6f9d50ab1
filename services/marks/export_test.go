package marks

import (
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/admin"
)

// StaleCache is a Cache whose watch is current but has not yet delivered
// the removal of some of its marks.
func StaleCache(js jetstream.JetStream, kv jetstream.KeyValue, marks map[string]admin.QueueMark) *Cache {
	return &Cache{js: js, kv: kv, current: true, marks: marks}
}
