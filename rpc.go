package tbgateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/thingsgate/tbgateway/internal/jsonx"
	"github.com/thingsgate/tbgateway/internal/outbox"
	"github.com/thingsgate/tbgateway/internal/ratelimit"
)

const topicGatewayRPC = "v1/gateway/rpc"

// RPCRequest is a server-side RPC call to a device behind the gateway or to
// the gateway itself.
type RPCRequest struct {
	// Device is the target device, "" for the gateway itself.
	Device string
	// ID is the server's request id. For devices behind the gateway ids
	// start at 0 and repeat per device, so (Device, ID) identifies a call.
	ID     int
	Method string
	// Params is the raw JSON of the parameters (any JSON value); nil when
	// the server sent none.
	Params json.RawMessage
}

// Bind decodes the parameters into v with encoding/json.
func (r *RPCRequest) Bind(v any) error {
	if len(r.Params) == 0 {
		return fmt.Errorf("%w: rpc %q has no params", ErrInvalidValue, r.Method)
	}
	return json.Unmarshal(r.Params, v)
}

// RPCHandler answers server-side RPC. The result becomes the reply's data:
// nil sends {"success":true}, a json.RawMessage is sent as it is, anything
// else is encoded like a telemetry value. A non-nil error sends
// {"error":"<message>"} instead.
//
// Handlers run on the gateway's goroutines (WithHandlerQueue sets how many
// at once), never on the MQTT network goroutine; a panic is recovered and
// answered as an error. ctx ends when the gateway closes.
type RPCHandler interface {
	HandleRPC(ctx context.Context, req *RPCRequest) (any, error)
}

// RPCHandlerFunc adapts a function to RPCHandler.
type RPCHandlerFunc func(ctx context.Context, req *RPCRequest) (any, error)

// HandleRPC calls f.
func (f RPCHandlerFunc) HandleRPC(ctx context.Context, req *RPCRequest) (any, error) {
	return f(ctx, req)
}

// OnRPC sets the handler for RPCs to every device behind the gateway that
// has no handler of its own (nil removes it). An RPC with no handler at
// all is answered with an error. An RPCMux routes by method.
func (g *Gateway) OnRPC(h RPCHandler) { g.hs.setRPC(anyDevice, h) }

// RPCMux is an RPCHandler that routes each RPC to the handler registered
// for its method, as http.ServeMux routes requests by path. An RPC whose
// method has no handler goes to the one registered for the empty method
// (no RPC has an empty method), and without that is answered with an
// error. The zero value is ready to use; it is safe for concurrent use.
type RPCMux struct {
	mu sync.RWMutex
	m  map[string]RPCHandler
}

// NewRPCMux returns an empty RPCMux.
func NewRPCMux() *RPCMux { return new(RPCMux) }

// Handle registers h for method (nil removes it).
func (mux *RPCMux) Handle(method string, h RPCHandler) {
	mux.mu.Lock()
	defer mux.mu.Unlock()
	setHandler(&mux.m, method, h)
}

// HandleFunc registers f for method.
func (mux *RPCMux) HandleFunc(method string, f func(ctx context.Context, req *RPCRequest) (any, error)) {
	mux.Handle(method, RPCHandlerFunc(f))
}

// HandleRPC calls the handler registered for req.Method.
func (mux *RPCMux) HandleRPC(ctx context.Context, req *RPCRequest) (any, error) {
	h := mux.handler(req.Method)
	if h == nil {
		return nil, errNoHandler(req.Method)
	}
	return h.HandleRPC(ctx, req)
}

func (mux *RPCMux) handler(method string) RPCHandler {
	mux.mu.RLock()
	defer mux.mu.RUnlock()
	if h, ok := mux.m[method]; ok {
		return h
	}
	return mux.m[""]
}

// ErrNoHandler is matched by the answer to an RPC that no handler takes
// (an RPCMux without the method, or no handler at all). A handler may
// return it, wrapped, to decline a method; a notice the gateway acts on
// itself (gateway_device_renamed, gateway_device_deleted) is then still
// answered with success. Unprefixed: its text is what the server is told.
var ErrNoHandler = errors.New("no handler")

func errNoHandler(method string) error { return fmt.Errorf("%w for method %q", ErrNoHandler, method) }

type rpcKey struct {
	device string // "" for the gateway itself
	id     int
}

// onRPCRequest handles v1/gateway/rpc. The server sends
// {"device":D,"data":{"id":N,"method":M,"params":P}}; our own replies,
// which a plain broker hands back, carry a top-level "id" and are ignored.
func (g *Gateway) onRPCRequest(payload []byte) {
	req, echo, err := decodeRPCRequest(payload)
	switch {
	case echo:
		g.stats.echoes.Add(1)
	case err != nil:
		g.malformed(topicGatewayRPC, payload, err)
	default:
		g.dispatchRPC(req)
	}
}

// decodeRPCRequest parses {"device":D,"data":{"id":N,"method":M,"params":P}}.
// echo reports our own reply shape, which has a top-level "id".
func decodeRPCRequest(payload []byte) (req *RPCRequest, echo bool, err error) {
	var msg struct {
		Device *string          `json:"device"`
		ID     json.RawMessage  `json:"id"`
		Data   *json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(payload, &msg); err != nil {
		return nil, false, err
	}
	if msg.ID != nil {
		return nil, true, nil
	}
	if msg.Device == nil || *msg.Device == "" || msg.Data == nil {
		return nil, false, errors.New("missing device or data")
	}
	var data struct {
		ID     *int            `json:"id"`
		Method string          `json:"method"`
		Params json.RawMessage `json:"params"`
	}
	if err := json.Unmarshal(*msg.Data, &data); err != nil {
		return nil, false, err
	}
	if data.ID == nil || data.Method == "" {
		return nil, false, errors.New("data without id or method")
	}
	return &RPCRequest{Device: *msg.Device, ID: *data.ID, Method: data.Method, Params: data.Params}, false, nil
}

// onSelfRPCRequest handles v1/devices/me/rpc/request/{id}.
func (g *Gateway) onSelfRPCRequest(idText string, payload []byte) {
	req, err := decodeSelfRPCRequest(idText, payload)
	if err != nil {
		g.malformed(topicSelfRPCRequestPrefix+idText, payload, err)
		return
	}
	g.dispatchRPC(req)
}

// decodeSelfRPCRequest parses {"method":M,"params":P} with the id from
// the topic.
func decodeSelfRPCRequest(idText string, payload []byte) (*RPCRequest, error) {
	id, err := strconv.Atoi(idText)
	if err != nil {
		return nil, err
	}
	var data struct {
		Method string          `json:"method"`
		Params json.RawMessage `json:"params"`
	}
	if err := json.Unmarshal(payload, &data); err != nil {
		return nil, err
	}
	if data.Method == "" {
		return nil, errors.New("no method")
	}
	return &RPCRequest{ID: id, Method: data.Method, Params: data.Params}, nil
}

// dispatchRPC queues the handler call. A request whose (device, id) is
// still being handled is a duplicate delivery: it is dropped and counted.
// One that finds the lane full is answered with an error at once, so that
// the caller on the server's side is not left waiting for its timeout.
func (g *Gateway) dispatchRPC(req *RPCRequest) {
	key := rpcKey{req.Device, req.ID}
	if !g.hs.start(key) {
		g.stats.duplicateRPCs.Add(1)
		g.log.Warn("tbgateway: duplicate RPC dropped", "device", req.Device, "request_id", req.ID)
		return
	}
	h := g.hs.rpcFor(req.Device)
	if !g.lanes.rpcs.Submit(func() { g.serveRPC(h, req) }, len(req.Params)) {
		g.stats.handlerDropped.Add(1)
		g.log.Warn("tbgateway: RPC refused: handler queue full", "device", req.Device, "method", req.Method, "request_id", req.ID)
		go g.reply(req, nil, ErrHandlerQueueFull) // not on paho's goroutine: the reply waits for its PUBACK
	}
}

func (g *Gateway) serveRPC(h RPCHandler, req *RPCRequest) {
	var result any
	var err error
	switch {
	case req.Device == "" && (req.Method == methodDeviceRenamed || req.Method == methodDeviceDeleted):
		// The gateway acts on the notice itself (and tells the device
		// listener); a user handler for the method may still answer.
		err = g.onDeviceNotice(req)
		if h != nil && err == nil {
			if result, err = g.callHandler(h, req); errors.Is(err, ErrNoHandler) {
				result, err = nil, nil // declined: the notice was acted on all the same
			}
		}
	case h == nil:
		err = errNoHandler(req.Method)
	default:
		result, err = g.callHandler(h, req)
	}
	g.reply(req, result, err)
}

// reply sends an RPC's answer and marks it answered.
func (g *Gateway) reply(req *RPCRequest, result any, err error) {
	defer g.hs.finish(rpcKey{req.Device, req.ID})
	topic, payload := encodeRPCReply(req, result, err)
	if err := g.publish(g.life.ctx, &outbox.Record{Topic: topic, Body: payload, DeviceName: req.Device}); err != nil {
		g.log.Warn("tbgateway: sending RPC reply failed", "device", req.Device, "method", req.Method, "request_id", req.ID, "err", err)
	}
}

func (g *Gateway) callHandler(h RPCHandler, req *RPCRequest) (result any, err error) {
	defer func() {
		if v := recover(); v != nil {
			g.stats.panics.Add(1)
			g.log.Error("tbgateway: RPC handler panicked", "device", req.Device, "method", req.Method, "panic", v)
			result, err = nil, fmt.Errorf("handler panicked: %v", v)
		}
	}()
	return h.HandleRPC(g.life.ctx, req)
}

// encodeRPCReply builds the reply: {"device":D,"id":N,"data":...} on
// v1/gateway/rpc for a device (data is required: the server closes the
// connection without it), or the bare data on
// v1/devices/me/rpc/response/{id} for the gateway itself.
func encodeRPCReply(req *RPCRequest, result any, herr error) (topic string, payload []byte) {
	data := encodeRPCData(result, herr)
	if req.Device == "" {
		return topicSelfRPCResponsePrefix + strconv.Itoa(req.ID), data
	}
	b := make([]byte, 0, len(data)+len(req.Device)+32)
	b = append(b, `{"device":`...)
	b = jsonx.AppendString(b, req.Device)
	b = append(b, `,"id":`...)
	b = strconv.AppendInt(b, int64(req.ID), 10)
	b = append(b, `,"data":`...)
	b = append(b, data...)
	return topicGatewayRPC, append(b, '}')
}

func encodeRPCData(result any, herr error) []byte {
	if herr == nil && result == nil {
		return []byte(`{"success":true}`)
	}
	if herr == nil {
		var s jsonx.Scratch
		b, err := jsonx.AppendValue(nil, result, &s)
		if err == nil {
			return b
		}
		herr = fmt.Errorf("encoding result: %w", err)
	}
	b := append([]byte(`{"error":`), jsonx.AppendString(nil, herr.Error())...)
	return append(b, '}')
}

// rpcErrorOf recognises a reply that is only {"error":"message"}.
func rpcErrorOf(reply []byte) (string, bool) {
	var m map[string]json.RawMessage
	if json.Unmarshal(reply, &m) != nil || len(m) != 1 {
		return "", false
	}
	raw, ok := m["error"]
	var msg string
	if !ok || len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &msg) != nil {
		return "", false
	}
	return msg, true
}

// encodeCall builds a client-side RPC request: {"method":M,"params":P}.
func encodeCall(method string, params any) ([]byte, error) {
	b := append(make([]byte, 0, 64), `{"method":`...)
	b = jsonx.AppendString(b, method)
	b = append(b, `,"params":`...)
	if params == nil {
		b = append(b, '{', '}')
	} else {
		var sc jsonx.Scratch
		var err error
		if b, err = jsonx.AppendValue(b, params, &sc); err != nil {
			return nil, valueError("", "params", err)
		}
	}
	return append(b, '}'), nil
}

func (g *Gateway) onSelfRPCResponse(idText string, payload []byte) {
	id, err := strconv.ParseInt(idText, 10, 32)
	if err != nil {
		g.malformed(topicSelfRPCResponsePrefix+idText, payload, err)
		return
	}
	// Copy: paho may reuse nothing today, but the reply outlives the
	// callback.
	if !g.req.calls.Resolve(int32(id), append([]byte(nil), payload...)) {
		g.log.Debug("tbgateway: RPC response nobody waits for", "request_id", id)
	}
}

// SessionLimits are the limits ThingsBoard applies to this gateway, as
// returned by the getSessionLimits RPC.
type SessionLimits struct {
	// MaxPayloadSize is the largest MQTT message the server accepts,
	// counted on the remaining length.
	MaxPayloadSize int `json:"maxPayloadSize"`
	// MaxInflightMessages bounds unprocessed messages per connection.
	MaxInflightMessages int `json:"maxInflightMessages"`
	// RateLimits apply to the gateway's own traffic (v1/devices/me/*).
	RateLimits RateLimits `json:"rateLimits"`
	// GatewayRateLimits apply to all traffic of the devices behind the
	// gateway together: one shared bucket, not one per device.
	GatewayRateLimits RateLimits `json:"gatewayRateLimits"`
}

// RateLimits are ThingsBoard rate limits in its "capacity:seconds,..."
// notation; "" means unlimited.
type RateLimits struct {
	Messages            string `json:"messages"`
	TelemetryMessages   string `json:"telemetryMessages"`
	TelemetryDataPoints string `json:"telemetryDataPoints"`
}

// decodeSessionLimits reads the getSessionLimits answer.
func decodeSessionLimits(raw []byte) (SessionLimits, error) {
	var l SessionLimits
	if err := json.Unmarshal(raw, &l); err != nil {
		return l, fmt.Errorf("%w: getSessionLimits: %v", ErrMalformedReply, err)
	}
	return l, nil
}

const methodSessionLimits = "getSessionLimits"

func (r RateLimits) parse() (ratelimit.Limits, error) {
	return ratelimit.ParseLimits(r.Messages, r.TelemetryMessages, r.TelemetryDataPoints)
}
