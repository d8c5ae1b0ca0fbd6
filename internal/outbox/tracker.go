package outbox

import (
	"sort"
	"strconv"
	"sync"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// Tracker is the paho Store of one connection: a new connection gets a
// new Tracker. It learns which message each PUBACK acknowledges (paho's
// tokens cannot say so reliably) and, when the connection ends, hands back
// what was never acknowledged, oldest first, for the gateway to send again
// behind the re-announcements of the next connection. paho itself never
// re-sends anything: the gateway opens every connection with a fresh
// client and a clean session.
type Tracker struct {
	store *seqStore

	mu        sync.Mutex
	byPayload map[*byte]*Message // expected, not yet stored by paho
	byID      map[uint16]*Message
	onAck     func(*Message)
	sent      uint64
	closed    bool // TakeBack ran: nothing more is tracked
}

// NewTracker returns a tracker that calls onAck for every acknowledged
// message, on paho's network goroutine (it must not block).
func NewTracker(onAck func(*Message)) *Tracker {
	return &Tracker{
		store:     &seqStore{m: map[string]seqEntry{}},
		byPayload: map[*byte]*Message{},
		byID:      map[uint16]*Message{},
		onAck:     onAck,
	}
}

// Expect registers m before it is handed to paho's Publish, which stores it
// under its packet id. It reports false once the connection was taken back:
// the caller must queue m's records again instead of publishing.
func (t *Tracker) Expect(m *Message) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.sent++
	m.sendSeq = t.sent
	t.byPayload[&m.Payload[0]] = m
	return true
}

// Unexpect forgets m when paho refused it before storing it; it reports
// whether m was still tracked (and so is the caller's to queue again).
func (t *Tracker) Unexpect(m *Message) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := &m.Payload[0]
	if t.byPayload[p] == m {
		delete(t.byPayload, p)
		return true
	}
	for id, x := range t.byID {
		if x == m {
			delete(t.byID, id)
			return true
		}
	}
	return false
}

// TakeBack ends the tracking and returns the messages sent and not
// acknowledged, oldest first. Acknowledgements that come later are
// ignored: the messages are the caller's again.
func (t *Tracker) TakeBack() []*Message {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	out := make([]*Message, 0, len(t.byID)+len(t.byPayload))
	for _, m := range t.byID {
		out = append(out, m)
	}
	for _, m := range t.byPayload {
		out = append(out, m)
	}
	clear(t.byID)
	clear(t.byPayload)
	sort.Slice(out, func(i, j int) bool { return out[i].sendSeq < out[j].sendSeq })
	return out
}

// Count is the number of messages in flight.
func (t *Tracker) Count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byID) + len(t.byPayload)
}

func idOf(key string) (uint16, bool) {
	if len(key) < 3 || key[:2] != "o." {
		return 0, false
	}
	n, err := strconv.ParseUint(key[2:], 10, 16)
	return uint16(n), err == nil
}

// Open implements mqtt.Store.
func (t *Tracker) Open() { t.store.Open() }

// Close implements mqtt.Store.
func (t *Tracker) Close() { t.store.Close() }

// Reset implements mqtt.Store; paho calls it on connect.
func (t *Tracker) Reset() { t.store.Reset() }

// All implements mqtt.Store.
func (t *Tracker) All() []string { return t.store.All() }

// Get implements mqtt.Store.
func (t *Tracker) Get(key string) packets.ControlPacket { return t.store.Get(key) }

// Put implements mqtt.Store: paho stores a QoS 1 publish under its packet
// id before sending it, which binds the id to the expected message.
func (t *Tracker) Put(key string, p packets.ControlPacket) {
	t.store.Put(key, p)
	pub, ok := p.(*packets.PublishPacket)
	if !ok || len(pub.Payload) == 0 {
		return
	}
	id, ok := idOf(key)
	if !ok {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if m, ok := t.byPayload[&pub.Payload[0]]; ok {
		delete(t.byPayload, &pub.Payload[0])
		t.byID[id] = m
	}
}

// Del implements mqtt.Store: paho deletes an outbound publish when its
// PUBACK arrives.
func (t *Tracker) Del(key string) {
	t.store.Del(key)
	id, ok := idOf(key)
	if !ok {
		return
	}
	t.mu.Lock()
	m := t.byID[id]
	delete(t.byID, id)
	t.mu.Unlock()
	if m != nil && t.onAck != nil {
		t.onAck(m)
	}
}

// seqStore keeps packets in insertion order by a counter.
type seqStore struct {
	mu  sync.Mutex
	seq uint64
	m   map[string]seqEntry
}

type seqEntry struct {
	seq uint64
	p   packets.ControlPacket
}

func (s *seqStore) Open()  {}
func (s *seqStore) Close() {}
func (s *seqStore) Reset() {
	s.mu.Lock()
	s.m = map[string]seqEntry{}
	s.mu.Unlock()
}

func (s *seqStore) Put(key string, p packets.ControlPacket) {
	s.mu.Lock()
	s.seq++
	s.m[key] = seqEntry{s.seq, p}
	s.mu.Unlock()
}

func (s *seqStore) Get(key string) packets.ControlPacket {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[key].p
}

func (s *seqStore) Del(key string) {
	s.mu.Lock()
	delete(s.m, key)
	s.mu.Unlock()
}

func (s *seqStore) All() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]string, 0, len(s.m))
	for k := range s.m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return s.m[keys[i]].seq < s.m[keys[j]].seq })
	return keys
}

var _ mqtt.Store = (*Tracker)(nil)
