package tbtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Server-side RPCs: to sub-devices on v1/gateway/rpc (WIRE §3.3) and to the
// gateway itself on v1/devices/me/rpc/request/{id} (WIRE §1.2). Like
// ThingsBoard's device actor, the server keeps an RPC whose target has no
// session until the caller's context ends, and writes it with a fresh id
// once a session opens (WIRE §10.6).

var (
	// ErrUnknownDevice is returned for an RPC to a device name the
	// registry does not hold (never created, or deleted).
	ErrUnknownDevice = errors.New("tbtest: unknown device")
	// ErrUnknownGateway is returned for an access token that was not
	// registered with WithGateway.
	ErrUnknownGateway = errors.New("tbtest: unknown gateway token")
)

// rpcCall is one server-side RPC, written at once if its target has a
// session, else kept until one opens.
type rpcCall struct {
	method string
	params []byte
	id     int                  // set when written
	reply  chan json.RawMessage // two-way calls: the answer (buffered 1)
	// settled is closed under s.mu when the call was written or failed
	// (err set); a kept call is still unsettled.
	settled chan struct{}
	err     error
}

func newCall(method string, params []byte, twoWay bool) *rpcCall {
	c := &rpcCall{method: method, params: params, settled: make(chan struct{})}
	if twoWay {
		c.reply = make(chan json.RawMessage, 1)
	}
	return c
}

// isSettled must be called under s.mu.
func (c *rpcCall) isSettled() bool {
	select {
	case <-c.settled:
		return true
	default:
		return false
	}
}

// fail settles a kept call with err.
func (c *rpcCall) fail(err error) {
	c.err = err
	close(c.settled)
}

func removeCall(list []*rpcCall, call *rpcCall) []*rpcCall {
	for i, c := range list {
		if c == call {
			return append(list[:i], list[i+1:]...)
		}
	}
	return list
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

// writeDeviceRPCLocked gives call the device's next id (ids count from 0
// per device, WIRE §3.3) and prepares it for the session on c.
func (s *Server) writeDeviceRPCLocked(d *device, c *conn, call *rpcCall) outbound {
	call.id = d.rpcSeq
	d.rpcSeq++
	if call.reply != nil {
		s.pendingRPC[rpcKey{device: d.name, id: call.id}] = call.reply
	}
	close(call.settled)
	var data objWriter
	data.raw("id", []byte(strconv.Itoa(call.id))).raw("method", jsonString(call.method)).raw("params", call.params)
	var w objWriter
	w.raw("device", jsonString(d.name)).raw("data", data.bytes())
	return s.publishLocked(c, topicRPC, w.bytes())
}

// flushDeviceRPCsLocked writes the RPCs kept for d to its new session on c.
func (s *Server) flushDeviceRPCsLocked(d *device, c *conn) []outbound {
	var out []outbound
	for _, call := range d.waiting {
		out = append(out, s.writeDeviceRPCLocked(d, c, call))
	}
	d.waiting = nil
	return out
}

// deviceRPC starts call to a sub-device and waits until it is written.
func (s *Server) deviceRPC(ctx context.Context, device string, call *rpcCall) error {
	s.mu.Lock()
	d := s.devices[device]
	switch {
	case d == nil:
		s.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrUnknownDevice, device)
	case d.isGateway:
		s.mu.Unlock()
		return fmt.Errorf("tbtest: %q is a gateway: use GatewayRPC", device)
	}
	var out []outbound
	if c := liveSession(d); c != nil {
		out = append(out, s.writeDeviceRPCLocked(d, c, call))
	} else {
		d.waiting = append(d.waiting, call)
	}
	s.notifyLocked()
	s.mu.Unlock()
	s.send(out)
	return s.awaitWritten(ctx, call, func() { d.waiting = removeCall(d.waiting, call) },
		fmt.Sprintf("RPC %s to %q", call.method, device))
}

// awaitWritten waits until call is written or failed; unqueue runs under
// s.mu when giving up on a call still kept.
func (s *Server) awaitWritten(ctx context.Context, call *rpcCall, unqueue func(), what string) error {
	select {
	case <-call.settled:
		return call.err
	case <-ctx.Done():
		s.mu.Lock()
		settled := call.isSettled()
		if !settled {
			unqueue()
		}
		s.mu.Unlock()
		if settled { // written meanwhile
			return call.err
		}
		return fmt.Errorf("tbtest: %s (not delivered): %w", what, ctx.Err())
	case <-s.done:
		return fmt.Errorf("tbtest: %s: %w", what, ErrServerClosed)
	}
}

// RPC sends a two-way server-side RPC to a sub-device on v1/gateway/rpc as
// {"device":D,"data":{"id":N,"method":M,"params":P}} and waits for the
// gateway's reply {"device":D,"id":N,"data":…}, whose data it returns as
// compact JSON. params is marshalled to JSON (json.RawMessage is used as
// is). If the device has no open session, the RPC is kept and written with
// the device's next id once its gateway opens a session for it (a connect
// or any uplink for it, WIRE §10.6); an RPC already written stays pending
// under its id across reconnects. ctx is the RPC's timeout: RPC fails with
// ctx's error (wrapped) if it ends first, with ErrUnknownDevice for a name
// the registry does not hold and with ErrServerClosed on Close. A late
// reply is dropped as stale.
func (s *Server) RPC(ctx context.Context, device, method string, params any) (json.RawMessage, error) {
	p, err := marshalParams(params)
	if err != nil {
		return nil, err
	}
	call := newCall(method, p, true)
	if err := s.deviceRPC(ctx, device, call); err != nil {
		return nil, err
	}
	key := rpcKey{device: device, id: call.id}
	return s.await(ctx, call.reply, func() {
		if s.pendingRPC[key] == call.reply {
			delete(s.pendingRPC, key)
		}
	}, fmt.Sprintf("RPC %s to %q (id %d)", method, device, call.id))
}

// OneWayRPC sends a one-way server-side RPC to a sub-device. On the wire it
// is identical to a two-way RPC and consumes an id; no reply is awaited. It
// returns once the RPC is written, which for a device without an open
// session is when its gateway opens one (WIRE §10.6), or fails like RPC.
func (s *Server) OneWayRPC(ctx context.Context, device, method string, params any) error {
	p, err := marshalParams(params)
	if err != nil {
		return err
	}
	return s.deviceRPC(ctx, device, newCall(method, p, false))
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

// ownRPCLocked keeps an RPC to the gateway device itself and writes every
// kept one if the gateway is connected and subscribed to
// v1/devices/me/rpc/request/+ (ThingsBoard's device actor holds them until
// then).
func (s *Server) ownRPCLocked(g *gateway, call *rpcCall) []outbound {
	g.queue = append(g.queue, call)
	if c := liveConn(g); c != nil {
		if _, sub := c.subs[topicSelfRPCRequestSub]; sub {
			return s.flushQueueLocked(g)
		}
	}
	return nil
}

// flushQueueLocked writes every kept gateway RPC to the live connection,
// each with the gateway device's next id.
func (s *Server) flushQueueLocked(g *gateway) []outbound {
	c := liveConn(g)
	if c == nil {
		return nil
	}
	var out []outbound
	for _, call := range g.queue {
		call.id = g.dev.rpcSeq
		g.dev.rpcSeq++
		if call.reply != nil {
			s.pendingOwn[rpcKey{device: g.token, id: call.id}] = call.reply
		}
		close(call.settled)
		var w objWriter
		w.raw("method", jsonString(call.method)).raw("params", call.params)
		out = append(out, s.publishLocked(c, topicSelfRPCRequestPrefix+strconv.Itoa(call.id), w.bytes()))
	}
	g.queue = nil
	return out
}

// GatewayRPC sends a two-way RPC to the gateway device itself on
// v1/devices/me/rpc/request/{id} as {"method":M,"params":P} and waits for the
// gateway's answer on v1/devices/me/rpc/response/{id}, which it returns
// verbatim (the server does not validate it). Like ThingsBoard, it is only
// written while the gateway is connected and subscribed to
// v1/devices/me/rpc/request/+; until then it is kept, and gets its id when
// written. It fails with ErrUnknownGateway, ctx's error or ErrServerClosed.
func (s *Server) GatewayRPC(ctx context.Context, token, method string, params any) (json.RawMessage, error) {
	p, err := marshalParams(params)
	if err != nil {
		return nil, err
	}
	call := newCall(method, p, true)
	s.mu.Lock()
	g := s.gateways[token]
	if g == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: %q", ErrUnknownGateway, token)
	}
	out := s.ownRPCLocked(g, call)
	s.notifyLocked()
	s.mu.Unlock()
	s.send(out)
	what := fmt.Sprintf("gateway RPC %s to %q", method, g.dev.name)
	if err := s.awaitWritten(ctx, call, func() { g.queue = removeCall(g.queue, call) }, what); err != nil {
		return nil, err
	}
	key := rpcKey{device: token, id: call.id}
	return s.await(ctx, call.reply, func() {
		if s.pendingOwn[key] == call.reply {
			delete(s.pendingOwn, key)
		}
	}, fmt.Sprintf("%s (id %d)", what, call.id))
}

// notifyGatewayLocked sends a persisted one-way notification RPC to the
// gateway that last connected d (WIRE §1.2).
func (s *Server) notifyGatewayLocked(d *device, method string, params []byte) []outbound {
	g := s.gateways[d.gatewayToken]
	if g == nil {
		return nil
	}
	return s.ownRPCLocked(g, newCall(method, params, false))
}

// NotifyDeviceRenamed renames a sub-device in the registry (as a rename in
// the ThingsBoard UI) and sends the one-way RPC gateway_device_renamed with
// params {"<old>":"<new>"} to the gateway that last connected it; the RPC
// waits until that gateway subscribes to v1/devices/me/rpc/request/+. The
// device's open session is closed: the gateway must connect it again under
// its new name. RPCs kept for the device follow it to the new name.
// Nothing happens if oldName is unknown or newName exists.
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
// in the ThingsBoard UI), closes its session, fails the RPCs kept for it
// with ErrUnknownDevice and sends the one-way RPC gateway_device_deleted
// with params "<name>" to the gateway that last connected it (delivered
// once that gateway subscribes to v1/devices/me/rpc/request/+). A later
// uplink for the name creates a new device.
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
	for _, call := range d.waiting {
		call.fail(fmt.Errorf("%w: %q was deleted", ErrUnknownDevice, name))
	}
	d.waiting = nil
	delete(s.devices, name)
	out := s.notifyGatewayLocked(d, "gateway_device_deleted", jsonString(name))
	s.notifyLocked()
	s.mu.Unlock()
	s.send(out)
}
