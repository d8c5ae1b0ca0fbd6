package tbgateway

import (
	"fmt"
	"time"

	"github.com/thingsgate/tbgateway/internal/outbox"
)

// PoisonMessage is a message set aside because the server dropped the
// connection every time it was sent.
type PoisonMessage struct {
	Topic   string
	Payload []byte
	Drops   int
}

// poisonWindow: a loss counts against the oldest message in flight only if
// it came this soon after the message was sent, as when the server closes
// the connection on reading it.
const poisonWindow = 5 * time.Second

// poisonSpacing: losses closer together than this count once. A server
// that restarts again and again (or a flapping link) ends connections
// faster than any poison loop, whose reconnects back off.
const poisonSpacing = 250 * time.Millisecond

// checkPoison runs on every connection loss with the oldest message the
// connection never acknowledged; a connection that acknowledged data, or
// a loss soon after the last one counted, clears or skips the count. The server processes a connection's
// messages in order and closes it on the first one it rejects, so that
// message is the suspect. When the same record heads the suspect of
// several consecutive losses, each soon after it was sent, the message's
// records are first retried alone (coalescing may have packed innocent
// data with the culprit); a lone record that still brings the connection
// down as many times more is set aside: its caller gets ErrPoisonMessage,
// and checkPoison returns it so that it is not queued again. A poison
// record therefore costs 2 × the threshold connections, and a flapping
// network has to fail that many times in a row without progress to be
// mistaken for one. It runs on the session's goroutine.
func (s *sender) checkPoison(m *outbox.Message) *outbox.Message {
	g := s.g
	threshold := g.opts.poisonThreshold
	if threshold <= 0 || m == nil {
		return nil
	}
	head := m.Records[0]
	switch {
	case m.SentAt.IsZero() || time.Since(m.SentAt) > poisonWindow || s.dataAcks.Load() > 0:
		// Not sent just before the loss, or the server acknowledged
		// data on this connection: the server was taking data, and the
		// loss is the network's or the server's own.
		s.suspect.Store(nil)
		return nil
	case time.Since(s.lastDrop) < poisonSpacing:
		return nil
	case s.suspect.Load() == head:
		s.drops++
	default:
		s.suspect.Store(head)
		s.drops = 1
	}
	s.lastDrop = time.Now()
	if s.drops < threshold {
		return nil
	}
	if len(m.Records) > 1 || !head.Isolate {
		for _, r := range m.Records {
			r.Isolate = true
		}
		s.drops = 0
		g.stats.isolated.Add(1)
		g.log.Warn("tbgateway: message rejected repeatedly; retrying its parts one by one", "topic", m.Topic, "records", len(m.Records))
		return nil
	}
	s.suspect.Store(nil)
	s.drops = 0
	g.stats.poisoned.Add(1)
	g.log.Error("tbgateway: message set aside: the server closed the connection each time it was sent",
		"topic", m.Topic, "bytes", len(m.Payload), "drops", threshold*2)
	s.poisonMu.Lock()
	if len(s.poisoned) < 100 {
		s.poisoned = append(s.poisoned, PoisonMessage{Topic: m.Topic, Payload: m.Payload, Drops: threshold})
	}
	s.poisonMu.Unlock()
	if s.durable != nil {
		s.durable.setAside(m.Records)
	}
	g.failRecords(m, fmt.Errorf("%w: %s message of %d bytes", ErrPoisonMessage, m.Topic, len(m.Payload)))
	return m
}

// PoisonMessages returns the messages set aside since Dial (at most 100).
func (g *Gateway) PoisonMessages() []PoisonMessage {
	s := g.out
	s.poisonMu.Lock()
	defer s.poisonMu.Unlock()
	return append([]PoisonMessage(nil), s.poisoned...)
}
