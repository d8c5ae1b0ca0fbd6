package tbtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

var (
	// ErrDeviceOffline is returned when a downlink needs an open session:
	// a sub-device that its gateway has not connected (or has disconnected),
	// or a gateway without a live connection.
	ErrDeviceOffline = errors.New("tbtest: device not connected")
	// ErrUnknownGateway is returned for an access token that was not
	// registered with WithGateway.
	ErrUnknownGateway = errors.New("tbtest: unknown gateway token")
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
// itself and pushes {…} on v1/devices/me/attributes if the gateway is
// connected and subscribed to that topic (device-API updates need the
// subscription).
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
			if _, sub := c.subs[topicSelfAttributes]; sub {
				out = append(out, s.publishLocked(c, topicSelfAttributes, kvObject(list)))
			}
		}
		s.notifyLocked()
	}
	s.mu.Unlock()
	s.send(out)
}

// DeleteGatewaySharedAttributes deletes shared attributes of the gateway
// device and pushes {"deleted":[…]} on v1/devices/me/attributes if the
// gateway is connected and subscribed to it.
func (s *Server) DeleteGatewaySharedAttributes(token string, keys ...string) {
	s.mu.Lock()
	g := s.gateways[token]
	var out []outbound
	if g != nil && len(keys) > 0 {
		for _, k := range keys {
			delete(g.dev.shared, k)
		}
		if c := liveConn(g); c != nil {
			if _, sub := c.subs[topicSelfAttributes]; sub {
				out = append(out, s.publishLocked(c, topicSelfAttributes, deletedObject(keys)))
			}
		}
		s.notifyLocked()
	}
	s.mu.Unlock()
	s.send(out)
}

func marshalParams(params any) ([]byte, error) {
	if raw, ok := params.(json.RawMessage); ok {
		if !json.Valid(raw) {
			return nil, fmt.Errorf("tbtest: params is not valid JSON")
		}
		return compactJSON(raw), nil
	}
	b, err := json.Marshal(params)
	if err != nil {
		return nil, fmt.Errorf("tbtest: marshal params: %w", err)
	}
	return b, nil
}

// rpcRequestLocked prepares a server RPC to a connected sub-device and
// returns its id.
func (s *Server) rpcRequestLocked(d *device, c *conn, method string, params []byte) (int, outbound) {
	id := d.rpcSeq
	d.rpcSeq++
	var data objWriter
	data.raw("id", []byte(strconv.Itoa(id))).raw("method", jsonString(method)).raw("params", params)
	var w objWriter
	w.raw("device", jsonString(d.name)).raw("data", data.bytes())
	return id, s.publishLocked(c, topicRPC, w.bytes())
}

// RPC sends a two-way server-side RPC to a connected sub-device on
// v1/gateway/rpc as {"device":D,"data":{"id":N,"method":M,"params":P}} (ids
// count from 0 per device, WIRE §3.3) and waits for the gateway's reply
// {"device":D,"id":N,"data":…}. It returns the reply's data as compact JSON.
// params is marshalled to JSON (json.RawMessage is used as is). It fails with
// ErrDeviceOffline if the device has no open session, with ctx's error
// (wrapped) if ctx ends first, and with ErrServerClosed on Close. A late
// reply is dropped as stale.
func (s *Server) RPC(ctx context.Context, device, method string, params any) (json.RawMessage, error) {
	p, err := marshalParams(params)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	d := s.devices[device]
	c := liveSession(d)
	if c == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: %q", ErrDeviceOffline, device)
	}
	id, out := s.rpcRequestLocked(d, c, method, p)
	key := rpcKey{device: device, id: id}
	ch := make(chan json.RawMessage, 1)
	s.pendingRPC[key] = ch
	s.notifyLocked()
	s.mu.Unlock()
	s.send([]outbound{out})
	return s.await(ctx, ch, func() {
		if s.pendingRPC[key] == ch {
			delete(s.pendingRPC, key)
		}
	}, fmt.Sprintf("RPC %s to %q (id %d)", method, device, id))
}

// await waits for a reply; cancel runs under s.mu when giving up.
func (s *Server) await(ctx context.Context, ch chan json.RawMessage, cancel func(), what string) (json.RawMessage, error) {
	select {
	case data := <-ch:
		return data, nil
	case <-ctx.Done():
		s.mu.Lock()
		cancel()
		s.mu.Unlock()
		select { // the reply may have won the race
		case data := <-ch:
			return data, nil
		default:
		}
		return nil, fmt.Errorf("tbtest: %s: %w", what, ctx.Err())
	case <-s.done:
		return nil, fmt.Errorf("tbtest: %s: %w", what, ErrServerClosed)
	}
}

// OneWayRPC sends a one-way server-side RPC to a connected sub-device. On
// the wire it is identical to a two-way RPC and consumes an id; no reply is
// awaited. It fails with ErrDeviceOffline if the device has no open session.
func (s *Server) OneWayRPC(device, method string, params any) error {
	p, err := marshalParams(params)
	if err != nil {
		return err
	}
	s.mu.Lock()
	d := s.devices[device]
	c := liveSession(d)
	if c == nil {
		s.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrDeviceOffline, device)
	}
	_, out := s.rpcRequestLocked(d, c, method, p)
	s.notifyLocked()
	s.mu.Unlock()
	s.send([]outbound{out})
	return nil
}

// ownRPCLocked prepares a server RPC to the gateway device itself: written
// at once if the gateway is subscribed to v1/devices/me/rpc/request/+, else
// queued until it subscribes (ThingsBoard's device actor keeps it).
func (s *Server) ownRPCLocked(g *gateway, method string, params []byte) (int, []outbound) {
	id := g.dev.rpcSeq
	g.dev.rpcSeq++
	var w objWriter
	w.raw("method", jsonString(method)).raw("params", params)
	g.queue = append(g.queue, queuedRPC{id: id, payload: w.bytes()})
	if c := liveConn(g); c != nil {
		if _, sub := c.subs[topicSelfRPCRequestSub]; sub {
			return id, s.flushQueueLocked(g)
		}
	}
	return id, nil
}

// flushQueueLocked prepares every queued gateway RPC for the live connection.
func (s *Server) flushQueueLocked(g *gateway) []outbound {
	c := liveConn(g)
	if c == nil {
		return nil
	}
	var out []outbound
	for _, q := range g.queue {
		out = append(out, s.publishLocked(c, topicSelfRPCRequestPrefix+strconv.Itoa(q.id), q.payload))
	}
	g.queue = nil
	return out
}

// GatewayRPC sends a two-way RPC to the gateway device itself on
// v1/devices/me/rpc/request/{id} as {"method":M,"params":P} and waits for the
// gateway's answer on v1/devices/me/rpc/response/{id}, which it returns
// verbatim (the server does not validate it). Like ThingsBoard, it is only
// delivered once the gateway subscribed to v1/devices/me/rpc/request/+; until
// then it waits queued. It fails with ErrUnknownGateway, ErrDeviceOffline (the
// gateway is not connected when called), ctx's error or ErrServerClosed.
func (s *Server) GatewayRPC(ctx context.Context, token, method string, params any) (json.RawMessage, error) {
	p, err := marshalParams(params)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	g := s.gateways[token]
	if g == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: %q", ErrUnknownGateway, token)
	}
	if liveConn(g) == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: gateway %q", ErrDeviceOffline, g.dev.name)
	}
	id, out := s.ownRPCLocked(g, method, p)
	key := rpcKey{device: token, id: id}
	ch := make(chan json.RawMessage, 1)
	s.pendingOwn[key] = ch
	s.notifyLocked()
	s.mu.Unlock()
	s.send(out)
	return s.await(ctx, ch, func() {
		if s.pendingOwn[key] == ch {
			delete(s.pendingOwn, key)
		}
		for i, q := range g.queue {
			if q.id == id {
				g.queue = append(g.queue[:i], g.queue[i+1:]...)
				break
			}
		}
	}, fmt.Sprintf("gateway RPC %s to %q (id %d)", method, g.dev.name, id))
}

// notifyGatewayLocked sends a persisted one-way notification RPC to the
// gateway that last connected d (WIRE §1.2).
func (s *Server) notifyGatewayLocked(d *device, method string, params []byte) []outbound {
	g := s.gateways[d.gatewayToken]
	if g == nil {
		return nil
	}
	_, out := s.ownRPCLocked(g, method, params)
	return out
}

// NotifyDeviceRenamed renames a sub-device in the registry (as a rename in
// the ThingsBoard UI) and sends the one-way RPC gateway_device_renamed with
// params {"<old>":"<new>"} to the gateway that last connected it; the RPC
// waits until that gateway subscribes to v1/devices/me/rpc/request/+. The
// device's open session is closed: the gateway must connect it again under
// its new name. Nothing happens if oldName is unknown or newName exists.
func (s *Server) NotifyDeviceRenamed(oldName, newName string) {
	s.mu.Lock()
	d := s.devices[oldName]
	if d == nil || d.isGateway || s.devices[newName] != nil {
		s.mu.Unlock()
		return
	}
	if c := d.session; c != nil {
		s.closeSessionLocked(c, oldName, false)
	}
	delete(s.devices, oldName)
	d.name = newName
	s.devices[newName] = d
	var w objWriter
	w.raw(oldName, jsonString(newName))
	out := s.notifyGatewayLocked(d, "gateway_device_renamed", w.bytes())
	s.notifyLocked()
	s.mu.Unlock()
	s.send(out)
}

// NotifyDeviceDeleted deletes a sub-device with all its data (as a delete
// in the ThingsBoard UI), closes its session and sends the one-way RPC
// gateway_device_deleted with params "<name>" to the gateway that last
// connected it (delivered once that gateway subscribes to
// v1/devices/me/rpc/request/+). A later uplink for the name creates a new
// device.
func (s *Server) NotifyDeviceDeleted(name string) {
	s.mu.Lock()
	d := s.devices[name]
	if d == nil || d.isGateway {
		s.mu.Unlock()
		return
	}
	if c := d.session; c != nil {
		s.closeSessionLocked(c, name, false)
	}
	delete(s.devices, name)
	out := s.notifyGatewayLocked(d, "gateway_device_deleted", jsonString(name))
	s.notifyLocked()
	s.mu.Unlock()
	s.send(out)
}
