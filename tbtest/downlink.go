package tbtest

import (
	"sort"
	"strings"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// outbound is one PUBLISH for one connection, prepared under s.mu and
// written after it is released.
type outbound struct {
	c  *conn
	pk packets.Packet
}

// topicMatches matches an MQTT filter (with + and #) against a topic.
func topicMatches(filter, topic string) bool {
	fs, ts := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, f := range fs {
		if f == "#" {
			return true
		}
		if i >= len(ts) || (f != "+" && f != ts[i]) {
			return false
		}
	}
	return len(fs) == len(ts)
}

// qosFor is the QoS ThingsBoard uses for a downlink: the granted QoS of a
// matching subscription, else 1 (WIRE §3).
func (c *conn) qosFor(topic string) (byte, bool) {
	for f, q := range c.subs {
		if topicMatches(f, topic) {
			return q, true
		}
	}
	return 1, false
}

// publishLocked prepares a downlink PUBLISH to c regardless of its
// subscriptions. Packet ids come from a per-connection counter that, like
// ThingsBoard's, is also consumed by QoS 0 publishes; it wraps from 65535 to 1
// (mochi cannot encode a QoS 1 PUBLISH with id 0).
func (s *Server) publishLocked(c *conn, topic string, payload []byte) outbound {
	qos, _ := c.qosFor(topic)
	c.nextID++
	if c.nextID == 0 {
		c.nextID = 1
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName:   topic,
		Payload:     payload,
	}
	if qos > 0 {
		pk.PacketID = c.nextID
	}
	s.info("tbtest: downlink", "conn", c.seq, "client", c.id, "topic", topic, "qos", qos, "payload", string(payload))
	s.sent = append(s.sent, Message{
		ClientID: c.id,
		Username: c.token,
		Topic:    topic,
		Payload:  cloneBytes(payload),
		QoS:      qos,
		Time:     time.Now(),
	})
	return outbound{c: c, pk: pk}
}

// send writes prepared downlinks (never under s.mu).
func (s *Server) send(out []outbound) {
	for _, o := range out {
		if err := o.c.cl.WritePacket(o.pk); err != nil {
			s.log.Debug("tbtest: downlink not written", "client", o.c.id, "topic", o.pk.TopicName, "error", err)
		}
	}
}

// liveSession returns the connection holding d's sub-device session.
func liveSession(d *device) *conn {
	if d == nil || d.session == nil || !d.session.alive() {
		return nil
	}
	return d.session
}

// liveConn returns the gateway's connection if it is up.
func liveConn(g *gateway) *conn {
	if g == nil || g.conn == nil || !g.conn.alive() {
		return nil
	}
	return g.conn
}

// typedValues converts Go values for storage; nil and unencodable values are
// dropped.
func typedValues(values map[string]any) []kv {
	out := make([]kv, 0, len(values))
	for k, v := range values {
		tv, ok, err := typeGo(v)
		if err != nil || !ok {
			continue
		}
		out = append(out, kv{k, tv})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key < out[j].key })
	return out
}

func kvObject(list []kv) []byte {
	var w objWriter
	for _, e := range list {
		w.value(e.key, e.val)
	}
	return w.bytes()
}

func deletedObject(keys []string) []byte {
	arr := make([]string, len(keys))
	for i, k := range keys {
		arr[i] = string(jsonString(k))
	}
	var w objWriter
	w.raw("deleted", []byte("["+strings.Join(arr, ",")+"]"))
	return w.bytes()
}

// deviceLocked returns device name, creating it (profile "default", no
// gateway) as if it had been created in the ThingsBoard UI.
func (s *Server) deviceLocked(name string) *device {
	d := s.devices[name]
	if d == nil {
		d = newDevice(name, "default", time.Now())
		s.devices[name] = d
	}
	return d
}

// AddDevice creates a device with the given profile as if it had been created
// in the ThingsBoard UI, before any gateway uses it. A gateway connect for it
// later keeps this profile. It does nothing if the device exists.
func (s *Server) AddDevice(name, profile string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.devices[name]; !ok {
		s.devices[name] = newDevice(name, profile, time.Now())
		s.notifyLocked()
	}
}

// SetSharedAttributes stores shared attributes of a sub-device (creating the
// device with profile "default" if unknown) and, if the device's gateway
// session is open, pushes {"device":D,"data":{…}} on v1/gateway/attributes to
// that gateway, whether or not it subscribed (WIRE §3.1). Go integers are
// stored as longs, floats as doubles, strings as strings (no numeric cast),
// json.RawMessage and other values as the server types their JSON; nil values
// are ignored.
func (s *Server) SetSharedAttributes(device string, values map[string]any) {
	list := typedValues(values)
	s.mu.Lock()
	d := s.deviceLocked(device)
	for _, e := range list {
		d.shared[e.key] = e.val
	}
	var out []outbound
	if c := liveSession(d); c != nil && len(list) > 0 {
		var w objWriter
		w.raw("device", jsonString(device)).raw("data", kvObject(list))
		out = append(out, s.publishLocked(c, topicAttributes, w.bytes()))
	}
	s.notifyLocked()
	s.mu.Unlock()
	s.send(out)
}

// DeleteSharedAttributes deletes shared attributes of a sub-device and, if
// its session is open, pushes {"device":D,"data":{"deleted":[…]}}.
func (s *Server) DeleteSharedAttributes(device string, keys ...string) {
	if len(keys) == 0 {
		return
	}
	s.mu.Lock()
	d := s.devices[device]
	var out []outbound
	if d != nil {
		for _, k := range keys {
			delete(d.shared, k)
		}
		if c := liveSession(d); c != nil {
			var w objWriter
			w.raw("device", jsonString(device)).raw("data", deletedObject(keys))
			out = append(out, s.publishLocked(c, topicAttributes, w.bytes()))
		}
		s.notifyLocked()
	}
	s.mu.Unlock()
	s.send(out)
}

// SetGatewaySharedAttributes stores shared attributes of the gateway device
// itself and pushes {…} if the gateway is connected and subscribed to
// v1/devices/me/attributes, v2/a or v2/a/j (device-API updates need the
// subscription), on the one it subscribed to last.
func (s *Server) SetGatewaySharedAttributes(token string, values map[string]any) {
	list := typedValues(values)
	s.mu.Lock()
	g := s.gateways[token]
	var out []outbound
	if g != nil {
		for _, e := range list {
			g.dev.shared[e.key] = e.val
		}
		if c := liveConn(g); c != nil && len(list) > 0 {
			if c.attrTopic != "" {
				out = append(out, s.publishLocked(c, c.attrTopic, kvObject(list)))
			}
		}
		s.notifyLocked()
	}
	s.mu.Unlock()
	s.send(out)
}

// DeleteGatewaySharedAttributes deletes shared attributes of the gateway
// device and pushes {"deleted":[…]} like SetGatewaySharedAttributes.
func (s *Server) DeleteGatewaySharedAttributes(token string, keys ...string) {
	s.mu.Lock()
	g := s.gateways[token]
	var out []outbound
	if g != nil && len(keys) > 0 {
		for _, k := range keys {
			delete(g.dev.shared, k)
		}
		if c := liveConn(g); c != nil {
			if c.attrTopic != "" {
				out = append(out, s.publishLocked(c, c.attrTopic, deletedObject(keys)))
			}
		}
		s.notifyLocked()
	}
	s.mu.Unlock()
	s.send(out)
}
