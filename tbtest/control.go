package tbtest

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Scripted faults after franz-go's kfake ControlKey (STYLE §1.4, DESIGN b5):
// a test registers a function for the PUBLISH packets a Match selects; the
// function runs when such a packet arrives and decides what happens to it,
// so faults are tied to protocol events ("the second telemetry of device B
// is lost", "park the connect until I say so") instead of sleeps and
// global switches.

// Match selects the PUBLISH packets a control function runs on. Every
// non-zero field must match.
type Match struct {
	// Topic is an MQTT topic filter ("+" and "#" allowed) the PUBLISH
	// topic must match.
	Topic string
	// Device is a device the payload addresses: a top-level key of a
	// telemetry, attributes or claim publish, the "device" member of the
	// other v1/gateway/* uplinks, the gateway's own name on device-API
	// topics.
	Device string
	// Token is the access token of the gateway that sent the packet.
	Token string
	// Conn is the connection number (Message.Conn).
	Conn uint64
	// Nth lets the first Nth-1 matching packets pass untouched: the
	// function first runs on the Nth (0 and 1 both mean the first).
	Nth int
}

type actionKind int

const (
	actPass actionKind = iota
	actDrop
	actNoAck
	actDelay
	actClose
	actDisconnect
	actReason
)

func (k actionKind) String() string {
	return [...]string{"pass", "drop", "no ack", "delay", "close", "disconnect", "reason"}[k]
}

// Action is what a control function decides for a packet. The zero Action
// is Pass.
type Action struct {
	kind  actionKind
	delay time.Duration
	code  byte
}

// Pass leaves the packet to normal processing. Like kfake's "not handled",
// it keeps the control function for later packets (unless it called
// DropControl) and lets the next matching control function run.
func Pass() Action { return Action{} }

// Drop ignores the packet as if it had been lost on the way: it is
// recorded in Messages but neither processed nor acknowledged.
func Drop() Action { return Action{kind: actDrop} }

// NoAck processes the packet normally but withholds its PUBACK, as if the
// acknowledgement had been lost on the way back.
func NoAck() Action { return Action{kind: actNoAck} }

// Delay processes the packet normally after d; the connection's later
// packets wait behind it, as they would behind a slow server.
func Delay(d time.Duration) Action { return Action{kind: actDelay, delay: max(d, 0)} }

// Close closes the TCP connection instead of processing the packet (no
// PUBACK, no DISCONNECT): a crash or a network cut at that packet.
func Close() Action { return Action{kind: actClose} }

// Disconnect sends an MQTT 5 gateway a DISCONNECT with reason code code
// and closes the connection instead of processing the packet; on MQTT
// 3.1.1 it is Close.
func Disconnect(code byte) Action { return Action{kind: actDisconnect, code: code} }

// Reason answers the packet with a PUBACK carrying reason code code (a
// plain PUBACK on MQTT 3.1.1) instead of processing it; the session stays.
// A QoS 0 packet is just dropped.
func Reason(code byte) Action { return Action{kind: actReason, code: code} }

// Packet is a PUBLISH seen by a control function, with the calls that
// manage the control function itself. Its methods only act while the
// control function runs; Payload must not be modified.
type Packet struct {
	Conn     uint64
	ClientID string
	// Username is the gateway's access token.
	Username string
	Topic    string
	Payload  []byte
	QoS      byte
	// Count numbers the packets this control function matched, from 1
	// (packets skipped by Match.Nth included).
	Count int

	run *controlRun
}

// controlRun is one call of a control function.
type controlRun struct {
	s          *Server
	ctl        *control
	gone       <-chan struct{}
	gwName     string
	keep, drop bool
	active     bool // the control function is running
}

// Devices returns the devices the payload addresses (see Match.Device).
func (p *Packet) Devices() []string { return payloadDevices(p.Topic, p.Payload, p.run.gwName) }

// KeepControl keeps the control function after it handled this packet
// (returned an Action other than Pass), so it runs on later packets too.
func (p *Packet) KeepControl() {
	if p.run.active {
		p.run.keep = true
	}
}

// DropControl removes the control function after this packet, whether it
// handled it or not; it takes precedence over KeepControl.
func (p *Packet) DropControl() {
	if p.run.active {
		p.run.drop = true
	}
}

// SleepControl parks the packet until wake is closed, then returns true.
// Other connections go on meanwhile (and other control functions may run),
// but this connection reads nothing more, as a server stuck on the packet
// would. It returns false, without waiting for wake, once the connection
// is closed or the server is closed: the packet is then discarded whatever
// the function returns.
func (p *Packet) SleepControl(wake <-chan struct{}) bool {
	r := p.run
	if !r.active {
		return false
	}
	r.s.ctl.run.Unlock()
	defer r.s.ctl.run.Lock()
	select {
	case <-wake:
		return true
	case <-r.gone:
	case <-r.s.done:
	}
	return false
}

type control struct {
	m    Match
	fn   func(*Packet) Action
	seen int // guarded by controls.mu
}

// controls is the Server's list of control functions.
type controls struct {
	mu   sync.Mutex // guards list and control.seen
	run  sync.Mutex // serializes control functions; released while one sleeps
	list []*control
	n    atomic.Int32 // len(list), read without mu on every publish
}

// Control registers fn for the PUBLISH packets m matches. Control functions
// run one at a time, in registration order, before the server acts on the
// packet; the first one that returns an Action other than Pass handles it
// and is then removed, unless it called KeepControl. fn may call any
// Server method, Control included; it runs on the connection's read
// goroutine, so the connection waits while it runs.
func (s *Server) Control(m Match, fn func(*Packet) Action) {
	if fn == nil {
		return
	}
	s.ctl.mu.Lock()
	defer s.ctl.mu.Unlock()
	s.ctl.list = append(s.ctl.list, &control{m: m, fn: fn})
	s.ctl.n.Store(int32(len(s.ctl.list)))
}

func (s *Server) removeControl(ct *control) {
	s.ctl.mu.Lock()
	defer s.ctl.mu.Unlock()
	if i := slices.Index(s.ctl.list, ct); i >= 0 {
		s.ctl.list = slices.Delete(s.ctl.list, i, i+1)
		s.ctl.n.Store(int32(len(s.ctl.list)))
	}
}

// runControls runs the control functions matching a publish on c and
// returns the decided Action (Pass if none handled it).
func (s *Server) runControls(c *conn, topic string, payload []byte, qos byte) Action {
	if s.ctl.n.Load() == 0 {
		return Action{}
	}
	s.ctl.run.Lock()
	defer s.ctl.run.Unlock()
	s.ctl.mu.Lock()
	list := slices.Clone(s.ctl.list)
	s.ctl.mu.Unlock()
	gwName := c.gw.dev.name
	var devices []string
	devicesDone := false
	for _, ct := range list {
		m := ct.m
		if m.Topic != "" && !topicMatches(m.Topic, topic) || m.Token != "" && m.Token != c.token || m.Conn != 0 && m.Conn != c.seq {
			continue
		}
		if m.Device != "" {
			if !devicesDone {
				devices, devicesDone = payloadDevices(topic, payload, gwName), true
			}
			if !slices.Contains(devices, m.Device) {
				continue
			}
		}
		s.ctl.mu.Lock()
		live := slices.Contains(s.ctl.list, ct)
		if live {
			ct.seen++
		}
		count := ct.seen
		s.ctl.mu.Unlock()
		if !live || count < m.Nth {
			continue
		}
		r := &controlRun{s: s, ctl: ct, gone: c.gone, gwName: gwName, active: true}
		act := ct.fn(&Packet{Conn: c.seq, ClientID: c.id, Username: c.token, Topic: topic, Payload: payload, QoS: qos, Count: count, run: r})
		r.active = false
		handled := act.kind != actPass
		if r.drop || handled && !r.keep {
			s.removeControl(ct)
		}
		if handled {
			return act
		}
	}
	return Action{}
}

// payloadDevices lists the devices a publish addresses (see Match.Device).
func payloadDevices(topic string, payload []byte, gwName string) []string {
	switch topic {
	case topicTelemetry, topicAttributes, topicClaim:
		list, err := members(payload)
		if err != nil {
			return nil
		}
		out := make([]string, len(list))
		for i, m := range list {
			out[i] = m.key
		}
		return out
	case topicConnect, topicDisconnect, topicAttrRequest, topicRPC:
		o, err := parseObject(payload)
		if err != nil {
			return nil
		}
		if raw, ok := o.get("device"); ok {
			if name, err := asString(raw); err == nil {
				return []string{name}
			}
		}
		return nil
	}
	if strings.HasPrefix(topic, "v1/devices/me/") || strings.HasPrefix(topic, "v2/") {
		return []string{gwName}
	}
	return nil
}
