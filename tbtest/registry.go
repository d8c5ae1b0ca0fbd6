package tbtest

import (
	"context"
	"log/slog"
	"maps"
	"sort"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// Device is a snapshot of one device in the server's registry: a sub-device
// created through a gateway, or a gateway itself.
type Device struct {
	Name string
	// Profile is the device profile name: the "type" of the connect that
	// created the device, "default" when created implicitly.
	Profile string
	// Gateway is the access token of the gateway that last connected the
	// device (additionalInfo lastConnectedGateway); "" for gateways.
	Gateway string
	// Connected reports an open session: for a sub-device, a gateway session
	// that receives its downlinks; for a gateway, a live MQTT connection.
	Connected bool
	Created   time.Time
	IsGateway bool
	// WaitingRPCs counts the server RPCs kept for the device until it has a
	// session (for a gateway: until it subscribes to
	// v1/devices/me/rpc/request/+), so a test can tell that an RPC it
	// issued is waiting rather than written.
	WaitingRPCs int
}

// Point is one stored telemetry value. Value holds int64, float64, string,
// bool or json.RawMessage (compact JSON), typed as the server types it.
type Point struct {
	TS    int64
	Value any
}

// Claim is one claim request stored for a device. DurationMs is the duration
// the server applies: a request without durationMs (or 0) gets
// DefaultClaimDurationMs.
type Claim struct {
	SecretKey  string
	DurationMs int64
}

// Message is one MQTT PUBLISH, as received from a client (Messages) or as
// sent by the server to a client (Sent).
type Message struct {
	// Conn numbers the gateway connection the message came on, from 1 in
	// the order the server accepted them (0 for a message on no accepted
	// connection, and for what the server sent): the order of messages
	// with one Conn is their wire order on that connection.
	Conn     uint64
	ClientID string
	// Username is the MQTT username, i.e. the gateway's access token.
	Username string
	Topic    string
	Payload  []byte
	QoS      byte
	Time     time.Time
}

// Rejection records traffic the server refused, for assertions.
type Rejection struct {
	ClientID string
	Username string
	// Topic is the PUBLISH topic or the SUBSCRIBE filter ("" for a refused
	// CONNECT or an oversized packet that is not a PUBLISH).
	Topic   string
	Payload []byte
	Reason  string
	// Closed reports that the server closed the connection because of it.
	Closed bool
}

type device struct {
	name         string
	profile      string
	isGateway    bool
	ownToken     string // access token, for gateway devices
	gatewayToken string
	created      time.Time
	session      *conn // open sub-device session, nil if none

	series map[string]*series // telemetry by key
	points int
	client map[string]any
	shared map[string]any
	claims []Claim
	rpcSeq int
	// waiting holds server RPCs issued while the device had no session
	// (WIRE §10.6), in issue order.
	waiting []*rpcCall
}

func newDevice(name, profile string, now time.Time) *device {
	return &device{
		name:    name,
		profile: profile,
		created: now,
		series:  map[string]*series{},
		client:  map[string]any{},
		shared:  map[string]any{},
	}
}

func (d *device) snapshot(s *Server) Device {
	out := Device{
		Name:      d.name,
		Profile:   d.profile,
		Gateway:   d.gatewayToken,
		Created:   d.created,
		IsGateway: d.isGateway,
	}
	if d.isGateway {
		if g := s.gateways[d.ownToken]; g != nil {
			out.Connected = liveConn(g) != nil
			out.WaitingRPCs = len(g.queue)
		}
	} else {
		out.Connected = liveSession(d) != nil
		out.WaitingRPCs = len(d.waiting)
	}
	return out
}

// series holds the points of one telemetry key in chunks of columns that
// hold no pointers: storing a point allocates nothing and copies nothing
// already stored, and the garbage collector has nothing to scan (ingest
// speed, see examples/bench -tbtest). Point values are built when read.
type series struct {
	chunks []*chunk
	n      int
	strs   map[int]string // string and JSON values by point index
	latest stored         // greatest timestamp; a later arrival wins a tie
}

type chunk struct {
	ts   []int64
	num  []uint64
	kind []valueKind
}

// maxChunk bounds a chunk's length; chunks start small, for the many
// short series of tests.
const maxChunk = 4096

type stored struct {
	ts int64
	v  value
}

// store records one telemetry point.
func (d *device) store(key string, ts int64, v value) {
	sr := d.series[key]
	if sr == nil {
		sr = &series{}
		d.series[key] = sr
	}
	sr.add(ts, v)
	d.points++
}

// storeBytes is store with the key as bytes (no string is allocated for a
// known key).
func (d *device) storeBytes(key []byte, ts int64, v value) {
	sr := d.series[string(key)]
	if sr == nil {
		sr = &series{}
		d.series[string(key)] = sr
	}
	sr.add(ts, v)
	d.points++
}

func (sr *series) add(ts int64, v value) {
	if sr.n == 0 || ts >= sr.latest.ts {
		sr.latest = stored{ts: ts, v: v}
	}
	var c *chunk
	if len(sr.chunks) > 0 {
		c = sr.chunks[len(sr.chunks)-1]
	}
	if c == nil || len(c.ts) == cap(c.ts) {
		size := 8
		if c != nil {
			size = min(2*cap(c.ts), maxChunk)
		}
		c = &chunk{ts: make([]int64, 0, size), num: make([]uint64, 0, size), kind: make([]valueKind, 0, size)}
		sr.chunks = append(sr.chunks, c)
	}
	c.ts = append(c.ts, ts)
	c.num = append(c.num, v.num)
	c.kind = append(c.kind, v.kind)
	if v.kind == vString || v.kind == vJSON {
		if sr.strs == nil {
			sr.strs = map[int]string{}
		}
		sr.strs[sr.n] = v.str
	}
	sr.n++
}

// points returns every point in arrival order.
func (sr *series) points() []Point {
	out := make([]Point, 0, sr.n)
	i := 0
	for _, c := range sr.chunks {
		for j := range c.ts {
			v := value{kind: c.kind[j], num: c.num[j]}
			if v.kind == vString || v.kind == vJSON {
				v.str = sr.strs[i]
			}
			out = append(out, stored{ts: c.ts[j], v: v}.point())
			i++
		}
	}
	return out
}

// gateway is a registered gateway device and its live connection.
type gateway struct {
	token string
	dev   *device
	conn  *conn
	own   *bucket // transportGatewayDevice*: the gateway's own session
	subs  *bucket // transportGateway*: shared by all sub-devices
	// queue holds server RPCs to the gateway itself that wait for a
	// connection subscribed to v1/devices/me/rpc/request/+.
	queue []*rpcCall
	// ota holds the assigned firmware and software packages (nil: none).
	ota [2]*otaPackage
}

// conn is one authenticated MQTT connection of a gateway.
type conn struct {
	cl    *mqtt.Client
	id    string
	seq   uint64 // Message.Conn
	token string
	gw    *gateway
	v5    bool            // MQTT 5: reason codes, DISCONNECT packets, notices
	subs  map[string]byte // accepted filter -> granted QoS
	// attrTopic is where the gateway's own shared-attribute updates go:
	// the last attribute topic it subscribed to ("" if none).
	attrTopic string
	sessions  map[string]*device // open sub-device sessions by name
	nextID    uint16
	dead      bool
	gone      chan struct{} // closed when dead is set
	post      *plan         // work to do after the current packet was answered
	fast      *fastParser   // reused for this connection's telemetry
	// prov marks a provision-only session (gw is nil, WIRE §10.7).
	prov bool
	// OTA downloads: chunk size and package by "fw/"+requestId.
	otaSize map[string]int
	otaPkg  map[string]*otaPackage
}

// alive reports a connection that is registered and whose socket is open
// (a CONNACK write can fail after registration without OnDisconnect).
func (c *conn) alive() bool { return !c.dead && !c.cl.Closed() }

type rpcKey struct {
	device string
	id     int
}

// --- read accessors ---

// Device returns the registry entry for name.
func (s *Server) Device(name string) (Device, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.devices[name]
	if d == nil {
		return Device{}, false
	}
	return d.snapshot(s), true
}

// Devices returns every device, gateways included, sorted by name.
func (s *Server) Devices() []Device {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Device, 0, len(s.devices))
	for _, d := range s.devices {
		out = append(out, d.snapshot(s))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// GatewayName returns the device name of the gateway with accessToken
// ("" if no such gateway is registered).
func (s *Server) GatewayName(accessToken string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g := s.gateways[accessToken]; g != nil {
		return g.dev.name
	}
	return ""
}

// Latest returns the stored telemetry point of key with the greatest
// timestamp.
func (s *Server) Latest(device, key string) (Point, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d := s.devices[device]; d != nil {
		if sr := d.series[key]; sr != nil {
			return sr.latest.point(), true
		}
	}
	return Point{}, false
}

// Series returns every stored point of key in arrival order.
func (s *Server) Series(device, key string) []Point {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d := s.devices[device]; d != nil {
		if sr := d.series[key]; sr != nil {
			return sr.points()
		}
	}
	return nil
}

// TelemetryKeys returns the telemetry keys stored for device, sorted, so a
// test can check that nothing beyond the expected keys arrived.
func (s *Server) TelemetryKeys(device string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.devices[device]
	if d == nil {
		return nil
	}
	keys := make([]string, 0, len(d.series))
	for k := range d.series {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// TelemetryCount returns the number of stored telemetry points of device
// over all keys.
func (s *Server) TelemetryCount(device string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d := s.devices[device]; d != nil {
		return d.points
	}
	return 0
}

// ClientAttributes returns a copy of the device's client-scope attributes
// (what the gateway published), nil for an unknown device.
func (s *Server) ClientAttributes(device string) map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d := s.devices[device]; d != nil {
		return maps.Clone(d.client)
	}
	return nil
}

// SharedAttributes returns a copy of the device's shared attributes (what
// the server side set), nil for an unknown device.
func (s *Server) SharedAttributes(device string) map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d := s.devices[device]; d != nil {
		return maps.Clone(d.shared)
	}
	return nil
}

// Claims returns the claim requests received for device, oldest first.
func (s *Server) Claims(device string) []Claim {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d := s.devices[device]; d != nil {
		return append([]Claim(nil), d.claims...)
	}
	return nil
}

// Messages returns every PUBLISH received from clients, in arrival order,
// including refused ones (packets over the size limit are only in Rejections).
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// Sent returns every PUBLISH the server wrote to a client, in order.
func (s *Server) Sent() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.sent...)
}

// Rejections returns the refused traffic recorded so far, in order.
func (s *Server) Rejections() []Rejection {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Rejection(nil), s.rejections...)
}

// WaitFor calls cond until it returns true or ctx is done. cond is re-checked
// whenever the server's state changes and at least every 10 ms; it must not
// block and may call any Server method.
func (s *Server) WaitFor(ctx context.Context, cond func() bool) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		case <-t.C:
		}
	}
}

// notifyLocked wakes WaitFor callers.
func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// info logs a server event at Info (payloads go at Debug), without
// building the attributes when nobody listens.
func (s *Server) info(msg string, args ...any) {
	if s.log.Enabled(context.Background(), slog.LevelInfo) {
		s.log.Info(msg, args...)
	}
}

// --- helpers used under s.mu ---

func cloneBytes(b []byte) []byte { return append([]byte(nil), b...) }

func (s *Server) rejectLocked(c *conn, topic string, payload []byte, reason string, closed bool) {
	r := Rejection{Topic: topic, Payload: cloneBytes(payload), Reason: reason, Closed: closed}
	if c != nil {
		r.ClientID, r.Username = c.id, c.token
	}
	s.addRejectionLocked(r)
}

// addRejectionLocked records and logs a refusal.
func (s *Server) addRejectionLocked(r Rejection) {
	s.rejections = append(s.rejections, r)
	s.info("tbtest: rejected", "client", r.ClientID, "topic", r.Topic, "reason", r.Reason, "closed", r.Closed)
}

// kv is a typed key/value pair ready to store.
type kv struct {
	key string
	val any
}

func rawToKVs(list []member) ([]kv, error) {
	out := make([]kv, 0, len(list))
	for _, m := range list {
		v, ok, err := typeJSON(m.val)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, kv{m.key, v})
		}
	}
	return out, nil
}
