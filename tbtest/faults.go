package tbtest

import (
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// DropConnection cuts the TCP connection of the gateway with token (no
// DISCONNECT packet, as a network failure or a server-side close looks on
// MQTT 3.1.1). Its sub-device sessions close at once, so their devices are
// reported disconnected when DropConnection returns. It reports whether the
// gateway was connected.
func (s *Server) DropConnection(token string) bool {
	s.mu.Lock()
	c := liveConn(s.gateways[token])
	var cl *mqtt.Client
	if c != nil {
		s.dropConnLocked(c)
		cl = c.cl
		s.notifyLocked()
	}
	s.mu.Unlock()
	if cl == nil {
		return false
	}
	cl.Stop(errStopped)
	return true
}

// HoldAcks withholds PUBACKs while hold is true: QoS 1 publishes are still
// processed (stored, answered) but never acknowledged, not even after
// HoldAcks(false), which only affects later publishes. Use it to test lost
// acknowledgements and client-side resends.
func (s *Server) HoldAcks(hold bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holdAcks = hold
}

// DelayAcks delays every later PUBACK by d (0 turns the delay off). The
// publish is processed first; the client's read loop on the server is
// paused for d, so later packets of the same client wait too.
func (s *Server) DelayAcks(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ackDelay = max(d, 0)
}

// RefuseConnections makes the server refuse every CONNECT for the next d
// with CONNACK "server unavailable" (3 on MQTT 3.1.1; 0x88 and DISCONNECT
// 0x89 on MQTT 5), as on a backend error; d <= 0 stops refusing. Existing
// connections are not affected.
func (s *Server) RefuseConnections(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refuseUntil = time.Now().Add(d)
}
