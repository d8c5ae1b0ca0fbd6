package outbox

import (
	"sort"
	"strconv"
	"sync"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// Tracker is the paho Store of the connection. It keeps paho's own
// behaviour (in-flight QoS 1 messages are kept, in order, and re-sent after
// a reconnect with their packet ids) and adds the one thing paho's tokens
// cannot give: which message each PUBACK acknowledges, even across
// reconnects, where paho completes the old token of a re-sent message
// without an acknowledgement. Its storage orders packets strictly by
// insertion.
type Tracker struct {
	store *seqStore

	mu        sync.Mutex
	byPayload map[*byte]*Message
	byID      map[uint16]*Message
	held      map[uint16]bool // set aside: never re-sent
	onAck     func(*Message)
	sent      uint64
	acks      uint64
}

// NewTracker returns a tracker that calls onAck for every acknowledged
// message, on paho's network goroutine (it must not block).
func NewTracker(onAck func(*Message)) *Tracker {
	return &Tracker{
		store:     &seqStore{m: map[string]seqEntry{}},
		byPayload: map[*byte]*Message{},
		byID:      map[uint16]*Message{},
		held:      map[uint16]bool{},
		onAck:     onAck,
	}
}

// Expect registers m before it is handed to paho's Publish, which stores it
// under its packet id.
func (t *Tracker) Expect(m *Message) {
	t.mu.Lock()
	t.sent++
	m.sendSeq = t.sent
	t.byPayload[&m.Payload[0]] = m
	t.mu.Unlock()
}

// Unexpect forgets m when paho refused it before storing it.
func (t *Tracker) Unexpect(m *Message) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := &m.Payload[0]
	if t.byPayload[p] == m {
		delete(t.byPayload, p)
		return true
	}
	return false
}

// InFlight returns the messages sent and not yet acknowledged, oldest
// first.
func (t *Tracker) InFlight() []*Message {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*Message, 0, len(t.byID)+len(t.byPayload))
	for _, m := range t.byID {
		out = append(out, m)
	}
	for _, m := range t.byPayload {
		out = append(out, m)
	}
	sortBySend(out)
	return out
}

// Overtakers returns the acknowledged messages of ms (oldest sent first)
// that an older one will follow: an older message acknowledged after it,
// or still in flight (to be re-sent after another reconnect). After a
// reconnect a publish paho was handing over when the connection dropped can
// reach the new connection ahead of the messages paho re-sends.
func (t *Tracker) Overtakers(ms []*Message) []*Message {
	t.mu.Lock() // AckSeq is written under it
	defer t.mu.Unlock()
	var out []*Message
	for i, m := range ms {
		if m.AckSeq == 0 {
			continue // not acknowledged: still in flight, or set aside
		}
		for _, older := range ms[:i] {
			if older.AckSeq > m.AckSeq || (older.AckSeq == 0 && t.hasLocked(older)) {
				out = append(out, m)
				break
			}
		}
	}
	return out
}

// Has reports whether m is still in flight.
func (t *Tracker) Has(m *Message) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.hasLocked(m)
}

func (t *Tracker) hasLocked(m *Message) bool {
	for _, x := range t.byID {
		if x == m {
			return true
		}
	}
	for _, x := range t.byPayload {
		if x == m {
			return true
		}
	}
	return false
}

// Count is the number of messages in flight.
func (t *Tracker) Count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byID) + len(t.byPayload)
}

// Hold sets m aside: paho will not send it again, and it counts no more.
func (t *Tracker) Hold(m *Message) {
	t.mu.Lock()
	var key string
	for id, x := range t.byID {
		if x == m {
			delete(t.byID, id)
			t.held[id] = true
			key = outboundKey(id)
		}
	}
	t.mu.Unlock()
	if key != "" {
		t.store.Del(key)
	}
}

func outboundKey(id uint16) string { return "o." + strconv.Itoa(int(id)) }

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

// Reset implements mqtt.Store; paho calls it on the first connect.
func (t *Tracker) Reset() { t.store.Reset() }

// All implements mqtt.Store.
func (t *Tracker) All() []string { return t.store.All() }

// Get implements mqtt.Store; a held message is no longer there. A publish
// is returned as a copy: paho's resume sets its DUP flag while the
// previous connection's writer may still be sending the stored packet
// (a data race in paho 1.5).
func (t *Tracker) Get(key string) packets.ControlPacket {
	if id, ok := idOf(key); ok {
		t.mu.Lock()
		held := t.held[id]
		t.mu.Unlock()
		if held {
			return nil
		}
	}
	p := t.store.Get(key)
	if pub, ok := p.(*packets.PublishPacket); ok {
		cp := *pub
		return &cp
	}
	return p
}

// Put implements mqtt.Store: paho stores a QoS 1 publish under its packet
// id before sending it, which binds the id to the expected message.
func (t *Tracker) Put(key string, p packets.ControlPacket) {
	pub, ok := p.(*packets.PublishPacket)
	if !ok {
		t.store.Put(key, p)
		return
	}
	// Keep a copy: paho's writer mutates the packet it sends while a
	// reconnect's resume may read the stored one.
	cp := *pub
	t.store.Put(key, &cp)
	if len(pub.Payload) == 0 {
		return
	}
	id, ok := idOf(key)
	if !ok {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.held, id)
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
	delete(t.held, id)
	if m != nil {
		t.acks++
		m.AckSeq = t.acks
	}
	t.mu.Unlock()
	if m != nil && t.onAck != nil {
		t.onAck(m)
	}
}

// seqStore keeps packets in insertion order by a counter. paho's
// OrderedMemoryStore orders by time.Now() with an unstable sort, so two
// publishes stored within the clock's resolution can be re-sent after a
// reconnect in the wrong order.
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

func sortBySend(ms []*Message) {
	for i := 1; i < len(ms); i++ {
		for j := i; j > 0 && ms[j].sendSeq < ms[j-1].sendSeq; j-- {
			ms[j], ms[j-1] = ms[j-1], ms[j]
		}
	}
}
