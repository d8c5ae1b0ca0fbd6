package tbtest

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Topics of the gateway API (WIRE §1).
const (
	topicConnect      = "v1/gateway/connect"
	topicDisconnect   = "v1/gateway/disconnect"
	topicTelemetry    = "v1/gateway/telemetry"
	topicAttributes   = "v1/gateway/attributes"
	topicAttrRequest  = "v1/gateway/attributes/request"
	topicAttrResponse = "v1/gateway/attributes/response"
	topicRPC          = "v1/gateway/rpc"
	topicClaim        = "v1/gateway/claim"

	topicSelfTelemetry          = "v1/devices/me/telemetry"
	topicSelfAttributes         = "v1/devices/me/attributes"
	topicSelfAttrRequestPrefix  = "v1/devices/me/attributes/request/"
	topicSelfAttrResponsePrefix = "v1/devices/me/attributes/response/"
	topicSelfRPCRequestPrefix   = "v1/devices/me/rpc/request/"
	topicSelfRPCResponsePrefix  = "v1/devices/me/rpc/response/"
	topicSelfRPCRequestSub      = "v1/devices/me/rpc/request/+"
	topicSelfClaim              = "v1/devices/me/claim"

	// v2 short forms of the device API (WIRE §1.2): telemetry and client
	// attributes, JSON by default or explicitly (/j); publishing and
	// subscribing work as on the v1 topics.
	topicShortTelemetry      = "v2/t"
	topicShortTelemetryJSON  = "v2/t/j"
	topicShortAttributes     = "v2/a"
	topicShortAttributesJSON = "v2/a/j"

	maxDeviceNameLength = 255
)

// acceptedFilters are the only SUBSCRIBE filters ThingsBoard accepts (WIRE §1.2).
var acceptedFilters = map[string]bool{
	"v1/devices/me/attributes":            true,
	"v1/devices/me/rpc/request/+":         true,
	"v1/devices/me/rpc/response/+":        true,
	"v1/devices/me/attributes/response/+": true,
	"v1/gateway/attributes":               true,
	"v1/gateway/rpc":                      true,
	"v1/gateway/attributes/response":      true,
	"v2/a":                                true,
	"v2/a/j":                              true,
	"v2/a/p":                              true,
	"v2/a/res/+":                          true,
	"v2/a/res/j/+":                        true,
	"v2/a/res/p/+":                        true,
	"v2/r/req/+":                          true,
	"v2/r/req/j/+":                        true,
	"v2/r/req/p/+":                        true,
	"v2/r/res/+":                          true,
	"v2/r/res/j/+":                        true,
	"v2/r/res/p/+":                        true,
	"v1/devices/me/fw/response/+/chunk/+": true,
	"v1/devices/me/sw/response/+/chunk/+": true,
	"v2/fw/response/+/chunk/+":            true,
	"v2/sw/response/+/chunk/+":            true,
}

var jsonValid = json.Valid

// up carries what a handler needs about the PUBLISH being processed.
type up struct {
	c   *conn
	pk  packets.Packet
	p   *plan
	now time.Time
	// createCode is the PUBACK code of a failed device lookup/creation
	// (0 means the usual 0x80/0x97).
	createCode byte
}

func (u *up) nowMs() int64 { return u.now.UnixMilli() }

func (s *Server) dispatchLocked(c *conn, pk packets.Packet, p *plan, now time.Time) {
	u := &up{c: c, pk: pk, p: p, now: now}
	topic := pk.TopicName
	if strings.HasPrefix(topic, "v1/gateway") {
		switch topic {
		case topicConnect, topicDisconnect, topicTelemetry, topicAttributes,
			topicAttrRequest, topicRPC, topicClaim:
		default:
			s.topicInvalidLocked(u, "unknown gateway topic")
			return
		}
		if topic == topicTelemetry && s.fastTelemetryLocked(u) {
			return
		}
		if !s.syntaxLocked(u) {
			return
		}
		switch topic {
		case topicConnect:
			s.onConnect(u)
		case topicDisconnect:
			s.onDisconnect(u)
		case topicTelemetry:
			s.onTelemetry(u)
		case topicAttributes:
			s.onAttributes(u)
		case topicAttrRequest:
			s.onAttrRequest(u)
		case topicRPC:
			s.onRPCReply(u)
		case topicClaim:
			s.onClaim(u)
		}
		return
	}
	switch {
	case topic == topicSelfTelemetry, topic == topicShortTelemetry, topic == topicShortTelemetryJSON:
		s.onSelfTelemetry(u)
	case topic == topicSelfAttributes, topic == topicShortAttributes, topic == topicShortAttributesJSON:
		s.onSelfAttributes(u)
	case strings.HasPrefix(topic, topicSelfAttrRequestPrefix):
		s.onSelfAttrRequest(u)
	case strings.HasPrefix(topic, topicSelfRPCRequestPrefix):
		s.onSelfRPCRequest(u)
	case strings.HasPrefix(topic, topicSelfRPCResponsePrefix):
		s.onSelfRPCResponse(u)
	case topic == topicSelfClaim:
		s.onSelfClaim(u)
	case strings.HasPrefix(topic, "v2/fw/request/"), strings.HasPrefix(topic, "v2/sw/request/"):
		if kind, req, chunk, ok := otaRequest(topic); ok {
			s.onOTARequest(u, kind, req, chunk)
		} else {
			s.topicInvalidLocked(u, "unsupported topic")
		}
	default:
		s.topicInvalidLocked(u, "unsupported topic")
	}
}

// --- sub-device sessions ---

// creationError is why the server would fail to create a device
// asynchronously (a plain PUBACK on MQTT 3.1.1, nothing stored).
func creationError(name, profile string) string {
	switch {
	case name == "":
		return "device creation failed: empty device name"
	case len(name) > maxDeviceNameLength:
		return "device creation failed: device name longer than 255 characters"
	case profile == "":
		return "device creation failed: empty device profile name"
	}
	return ""
}

// sessionLocked returns the sub-device session of name on the connection,
// opening it (and creating the device) if needed, as every gateway uplink
// does (WIRE §2.3). It returns nil if the device cannot be used: then either
// the connection is closing (u.p.closing()) or the failure decided the
// PUBACK's code.
func (s *Server) sessionLocked(u *up, name, profile string) *device {
	c := u.c
	if d := c.sessions[name]; d != nil {
		return d
	}
	if !c.gw.subs.message(u.now) {
		s.syncRefusalLocked(u, fmt.Sprintf("rate limit (gateway messages): lookup/creation of device %q", name))
		return nil
	}
	d := s.devices[name]
	if d == nil {
		code := codeUnspecifiedError
		reason := creationError(name, profile)
		if reason == "" && s.cfg.maxDevices > 0 && len(s.devices)-len(s.gateways) >= s.cfg.maxDevices {
			code, reason = codeQuotaExceeded, "device creation failed: Maximum number of devices reached!"
		}
		if reason != "" {
			if u.createCode != 0 {
				code = u.createCode
			}
			s.createFailedLocked(u, reason, code)
			return nil
		}
		d = newDevice(name, profile, u.now)
		s.devices[name] = d
		s.info("tbtest: device created", "device", name, "profile", profile, "gateway", c.gw.dev.name)
	}
	if !d.isGateway {
		d.gatewayToken = c.token
	}
	if !c.gw.subs.message(u.now) {
		s.rejectLocked(c, u.pk.TopicName, u.pk.Payload, fmt.Sprintf("rate limit (gateway messages): session open of device %q", name), false)
	}
	if old := d.session; old != nil && old != c {
		for n, od := range old.sessions {
			if od == d {
				delete(old.sessions, n)
			}
		}
	}
	d.session = c
	c.sessions[name] = d
	u.p.opened = append(u.p.opened, d)
	return d
}

// flushOpenedLocked writes the RPCs kept for the devices whose session the
// packet opened, after its PUBACK, unless the packet closes the connection.
func (s *Server) flushOpenedLocked(c *conn, p *plan) {
	if p.closing() {
		return
	}
	for _, d := range p.opened {
		if d.session == c && len(d.waiting) > 0 {
			p.after = append(p.after, s.flushDeviceRPCsLocked(d, c)...)
		}
	}
}

// closeSessionLocked closes the sub-device session name on c. counted says
// whether the session-close message consumes the gateway's rate limit.
func (s *Server) closeSessionLocked(c *conn, name string, counted bool) {
	d := c.sessions[name]
	if d == nil {
		return
	}
	delete(c.sessions, name)
	if d.session == c {
		d.session = nil
	}
	if counted {
		c.gw.subs.message(time.Now())
	}
}

// dropConnLocked forgets a connection: its sub-device sessions close and the
// gateway is offline. The socket itself is closed by the caller.
func (s *Server) dropConnLocked(c *conn) {
	if c.dead {
		return
	}
	c.dead = true
	close(c.gone)
	names := make([]string, 0, len(c.sessions))
	for n := range c.sessions {
		names = append(names, n)
	}
	for _, n := range names {
		s.closeSessionLocked(c, n, true)
	}
	if c.gw != nil && c.gw.conn == c {
		c.gw.conn = nil
		c.gw.own.message(time.Now())
	}
}

// --- v1/gateway/* uplinks ---

// deviceName reads a required non-empty "device" member (connect/disconnect).
func (s *Server) deviceName(u *up) (string, *object, bool) {
	o, err := parseObject(u.pk.Payload)
	if err != nil {
		s.shapeLocked(u, "payload is not a JSON object")
		return "", nil, false
	}
	raw, ok := o.get("device")
	if !ok {
		s.shapeLocked(u, "missing device")
		return "", nil, false
	}
	name, err := asString(raw)
	if err != nil {
		s.shapeLocked(u, "device is not a string")
		return "", nil, false
	}
	if name == "" {
		s.shapeLocked(u, "empty device name")
		return "", nil, false
	}
	return name, o, true
}

func (s *Server) onConnect(u *up) {
	name, o, ok := s.deviceName(u)
	if !ok {
		return
	}
	profile := "default"
	if t, ok := o.get("type"); ok && jsonKind(t) != 'n' {
		var err error
		if profile, err = asString(t); err != nil {
			s.shapeLocked(u, "type is not a string")
			return
		}
	}
	s.sessionLocked(u, name, profile)
}

func (s *Server) onDisconnect(u *up) {
	name, _, ok := s.deviceName(u)
	if !ok {
		return
	}
	s.closeSessionLocked(u.c, name, true)
}

// deviceEntries splits a {"Device": value, …} payload and keeps the entries
// whose value has the JSON kind want; the others are skipped (and recorded).
// No entry left is a shape error.
func (s *Server) deviceEntries(u *up, want byte, what string) ([]member, bool) {
	list, err := members(u.pk.Payload)
	if err != nil {
		s.shapeLocked(u, "payload is not a JSON object")
		return nil, false
	}
	var out []member
	for _, m := range list {
		if jsonKind(m.val) == want {
			out = append(out, m)
			continue
		}
		s.rejectLocked(u.c, u.pk.TopicName, u.pk.Payload, fmt.Sprintf("entry of device %q skipped: value is not %s", m.key, what), false)
	}
	if len(out) == 0 {
		s.shapeLocked(u, "no valid device entry (message is empty)")
		return nil, false
	}
	return out, true
}

func (s *Server) onTelemetry(u *up) {
	entries, ok := s.deviceEntries(u, '[', "a JSON array")
	if !ok {
		return
	}
	empty := false
	for _, e := range entries {
		d := s.sessionLocked(u, e.key, "default")
		if u.p.closing() {
			return
		}
		if d == nil {
			continue
		}
		items, _ := elements(e.val)
		if len(items) == 0 {
			// Zero messages: the aggregate PUBACK callback never fires.
			empty = true
			s.rejectLocked(u.c, u.pk.TopicName, u.pk.Payload, fmt.Sprintf("empty telemetry array for device %q: never acknowledged", e.key), false)
			continue
		}
		pts, n, err := convertTelemetry(items, u.nowMs())
		if err != nil {
			if s.convertErrorLocked(u, fmt.Sprintf("telemetry of device %q: %v", e.key, err)) {
				return
			}
			continue
		}
		if !u.c.gw.subs.data(n, u.now) {
			if s.dataRefusedLocked(u, e.key, fmt.Sprintf("rate limit (gateway telemetry): device %q", e.key), true) {
				return
			}
			continue
		}
		storeTelemetry(d, pts)
		u.p.points += len(pts)
	}
	if empty {
		u.p.withhold()
	}
}

// fastTelemetryLocked handles a telemetry publish the fast parser accepts
// (see fastjson.go) exactly as onTelemetry would; false leaves it to
// onTelemetry.
func (s *Server) fastTelemetryLocked(u *up) bool {
	c := u.c
	if c.fast == nil {
		c.fast = &fastParser{}
	}
	fp := c.fast
	if !fp.telemetry(u.pk.Payload, u.nowMs()) {
		return false
	}
	for _, dev := range fp.devices {
		d := c.sessions[string(dev.name)]
		if d == nil {
			if d = s.sessionLocked(u, string(dev.name), "default"); u.p.closing() {
				return true
			}
			if d == nil {
				continue
			}
		}
		pts := fp.points[dev.from:dev.to]
		if !c.gw.subs.data(len(pts), u.now) {
			if s.dataRefusedLocked(u, string(dev.name), fmt.Sprintf("rate limit (gateway telemetry): device %q", dev.name), true) {
				return true
			}
			continue
		}
		for _, p := range pts {
			d.storeBytes(p.key, p.ts, p.v)
		}
		u.p.points += len(pts)
	}
	return true
}

type tsPoint struct {
	key string
	ts  int64
	v   value
}

// convertTelemetry converts telemetry items (WIRE §2.4) into points and
// counts the data points.
func convertTelemetry(items []json.RawMessage, nowMs int64) ([]tsPoint, int, error) {
	var out []tsPoint
	for i, it := range items {
		o, err := parseObject(it)
		if err != nil {
			return nil, 0, fmt.Errorf("item %d is not a JSON object", i)
		}
		if md, ok := o.get("metadata"); ok {
			if err := checkMetadata(md); err != nil {
				return nil, 0, fmt.Errorf("item %d: %v", i, err)
			}
		}
		var ts int64
		var list []member
		if o.has("ts") && o.has("values") {
			if ts, err = asLong(o.m["ts"]); err != nil {
				return nil, 0, fmt.Errorf("item %d: ts is not a long", i)
			}
			if list, err = members(o.m["values"]); err != nil {
				return nil, 0, fmt.Errorf("item %d: values is not a JSON object", i)
			}
		} else {
			ts = nowMs
			for _, m := range o.list {
				if m.key != "metadata" {
					list = append(list, m)
				}
			}
		}
		kvs, err := rawToKVs(list)
		if err != nil {
			return nil, 0, fmt.Errorf("item %d: %v", i, err)
		}
		for _, kv := range kvs {
			out = append(out, tsPoint{kv.key, ts, valueOf(kv.val)})
		}
	}
	return out, len(out), nil
}

func checkMetadata(raw json.RawMessage) error {
	o, err := parseObject(raw)
	if err != nil {
		return fmt.Errorf("metadata is not a JSON object")
	}
	for _, k := range []string{"connector", "receivedTs", "publishedTs"} {
		v, ok := o.get(k)
		if !ok || jsonKind(v) == 'n' {
			return fmt.Errorf("metadata.%s is missing", k)
		}
	}
	if _, err := asString(o.m["connector"]); err != nil {
		return fmt.Errorf("metadata.connector is not a string")
	}
	for _, k := range []string{"receivedTs", "publishedTs"} {
		if _, err := asLong(o.m[k]); err != nil {
			return fmt.Errorf("metadata.%s is not a long", k)
		}
	}
	return nil
}

func storeTelemetry(d *device, pts []tsPoint) {
	for _, p := range pts {
		d.store(p.key, p.ts, p.v)
	}
}

func (s *Server) onAttributes(u *up) {
	entries, ok := s.deviceEntries(u, '{', "a JSON object")
	if !ok {
		return
	}
	for _, e := range entries {
		d := s.sessionLocked(u, e.key, "default")
		if u.p.closing() {
			return
		}
		if d == nil {
			continue
		}
		list, _ := members(e.val)
		kvs, err := rawToKVs(list)
		if err != nil {
			if s.convertErrorLocked(u, fmt.Sprintf("attributes of device %q: %v", e.key, err)) {
				return
			}
			continue
		}
		if !u.c.gw.subs.data(len(kvs), u.now) {
			if s.dataRefusedLocked(u, e.key, fmt.Sprintf("rate limit (gateway telemetry): attributes of device %q", e.key), true) {
				return
			}
			continue
		}
		for _, kv := range kvs {
			d.client[kv.key] = kv.val
		}
		u.p.attributes += len(kvs)
	}
}

func (s *Server) onRPCReply(u *up) {
	o, err := parseObject(u.pk.Payload)
	if err != nil {
		s.shapeLocked(u, "payload is not a JSON object")
		return
	}
	const what = "RPC reply"
	name, bad := required(o, what, "device", "a string", asString)
	if bad != "" {
		s.shapeLocked(u, bad)
		return
	}
	id, bad := required(o, what, "id", "an int", asInt)
	if bad != "" {
		s.shapeLocked(u, bad)
		return
	}
	data, bad := required(o, what, "data", "JSON", anyJSON)
	if bad != "" {
		s.shapeLocked(u, bad)
		return
	}
	d := s.sessionLocked(u, name, "default")
	if d == nil {
		return
	}
	if !u.c.gw.subs.message(u.now) {
		s.dataRefusedLocked(u, name, "rate limit (gateway messages): RPC reply", true)
		return
	}
	key := rpcKey{device: name, id: id}
	if ch := s.pendingRPC[key]; ch != nil {
		delete(s.pendingRPC, key)
		ch <- compactJSON(data)
		return
	}
	s.log.Debug("tbtest: stale RPC reply dropped", "device", name, "id", id)
}

// claimOf reads a claim object (both members optional).
func claimOf(raw json.RawMessage) (Claim, error) {
	o, err := parseObject(raw)
	if err != nil {
		return Claim{}, fmt.Errorf("claim is not a JSON object")
	}
	var c Claim
	if v, ok := o.get("secretKey"); ok && jsonKind(v) != 'n' {
		if c.SecretKey, err = asString(v); err != nil {
			return Claim{}, fmt.Errorf("secretKey is not a string")
		}
	}
	if v, ok := o.get("durationMs"); ok && jsonKind(v) != 'n' {
		if c.DurationMs, err = asLong(v); err != nil {
			return Claim{}, fmt.Errorf("durationMs is not a long")
		}
	}
	if c.DurationMs == 0 {
		c.DurationMs = DefaultClaimDurationMs
	}
	return c, nil
}

func (s *Server) onClaim(u *up) {
	entries, ok := s.deviceEntries(u, '{', "a JSON object")
	if !ok {
		return
	}
	for _, e := range entries {
		d := s.sessionLocked(u, e.key, "default")
		if u.p.closing() {
			return
		}
		if d == nil {
			continue
		}
		cl, err := claimOf(e.val)
		if err != nil {
			if s.convertErrorLocked(u, fmt.Sprintf("claim of device %q: %v", e.key, err)) {
				return
			}
			continue
		}
		if !u.c.gw.subs.message(u.now) {
			if s.dataRefusedLocked(u, e.key, fmt.Sprintf("rate limit (gateway messages): claim of device %q", e.key), true) {
				return
			}
			continue
		}
		d.claims = append(d.claims, cl)
		u.p.claims++
	}
}
