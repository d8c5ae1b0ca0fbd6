package tbgateway

import (
	"errors"
	"fmt"
	"strconv"
)

// Sentinel errors. Test for them with errors.Is; the typed errors below wrap
// them with detail.
var (
	// ErrClosed is returned by every call made after Close.
	ErrClosed = errors.New("tbgateway: gateway closed")
	// ErrConnectionLost fails calls that were waiting for a reply (attribute
	// requests, Call) when the connection dropped; the request may or may
	// not have reached the server.
	ErrConnectionLost = errors.New("tbgateway: connection lost while waiting for a reply")
	// ErrInvalidDeviceName: a device name is empty, not UTF-8, or longer
	// than ThingsBoard's 255 characters. The server closes the connection
	// on an empty name, so it is refused before anything is sent.
	ErrInvalidDeviceName = errors.New("tbgateway: invalid device name")
	// ErrInvalidKey: an empty telemetry or attribute key or one that is not
	// UTF-8, a key given twice in an entry (in its Values and Points), a key
	// the server would misread ("metadata" or "values" in an entry without
	// timestamp), or a comma in a key of the gateway's own attribute
	// request.
	ErrInvalidKey = errors.New("tbgateway: invalid key")
	// ErrInvalidValue: NaN, ±Inf, nil, malformed JSON or a Point without
	// value where a value is expected.
	ErrInvalidValue = errors.New("tbgateway: invalid value")
	// ErrUnsupportedType: a value of a Go type that has no JSON form
	// (channel, function, complex number...).
	ErrUnsupportedType = errors.New("tbgateway: unsupported value type")
	// ErrNoData: a publish with no device, no entry or no value. ThingsBoard
	// never acknowledges an empty telemetry array, so it is refused here.
	ErrNoData = errors.New("tbgateway: nothing to send")
	// ErrPayloadTooLarge: the message would exceed the server's maximum
	// payload size (see WithMaxPayloadSize); ThingsBoard would close the
	// connection, so it is not sent.
	ErrPayloadTooLarge = errors.New("tbgateway: payload too large")
	// ErrQueueFull: the outbound queue is full and the overflow policy is
	// FailFast (or the call alone is larger than the queue).
	ErrQueueFull = errors.New("tbgateway: outbound queue full")
	// ErrEnqueued is wrapped by the error of a publish whose context ended
	// before the acknowledgement: the data is still queued and will be sent,
	// so retrying would duplicate it.
	ErrEnqueued = errors.New("tbgateway: enqueued")
	// ErrDropped: the data was evicted from a full queue by the DropOldest
	// policy before it could be sent.
	ErrDropped = errors.New("tbgateway: dropped from a full queue")
	// ErrExpired: the data waited in the queue longer than WithMaxAge.
	ErrExpired = errors.New("tbgateway: expired in the queue")
	// ErrPoisonMessage: the server closed the connection every time the
	// message was sent, so it was set aside (see Gateway.PoisonMessages).
	ErrPoisonMessage = errors.New("tbgateway: message set aside as poison")
	// ErrRateLimit: a message could never be admitted by ThingsBoard's rate
	// limits (more data points than a whole window allows).
	ErrRateLimit = errors.New("tbgateway: exceeds the rate limit")
	// ErrInvalidOption: an Option was given a value it cannot take.
	ErrInvalidOption = errors.New("tbgateway: invalid option")
	// ErrMalformedReply: the server's answer could not be decoded.
	// ErrHandlerQueueFull is the error an RPC is answered with when it
	// finds its handler lane full (WithHandlerQueue).
	ErrHandlerQueueFull = errors.New("tbgateway: handler queue full")
	ErrMalformedReply   = errors.New("tbgateway: malformed reply")
)

// ValueError reports which device, entry and key carried a value that
// cannot be sent. It wraps ErrInvalidValue, ErrUnsupportedType or
// ErrInvalidKey.
type ValueError struct {
	Device string // "" for the gateway's own data
	Key    string
	Err    error
}

// Error implements error.
func (e *ValueError) Error() string {
	s := "tbgateway: "
	if e.Device != "" {
		s += "device " + strconv.Quote(e.Device) + ": "
	}
	if e.Key != "" {
		s += "key " + strconv.Quote(e.Key) + ": "
	}
	return s + trimPrefix(e.Err.Error())
}

// Unwrap returns the underlying error.
func (e *ValueError) Unwrap() error { return e.Err }

// PayloadTooLargeError gives the size of a refused message as ThingsBoard
// counts it: the MQTT remaining length (topic, packet id and payload).
type PayloadTooLargeError struct {
	Topic string
	Size  int // remaining length the message would have had
	Limit int // the configured maximum
}

// Error implements error.
func (e *PayloadTooLargeError) Error() string {
	return fmt.Sprintf("tbgateway: payload too large: %s message of %d bytes exceeds the limit of %d", e.Topic, e.Size, e.Limit)
}

// Unwrap returns the underlying error.
func (e *PayloadTooLargeError) Unwrap() error { return ErrPayloadTooLarge }

// ConnectError is a refused MQTT CONNECT. Code is the CONNACK return code
// (MQTT 3.1.1): ThingsBoard answers 5 for an unknown access token, 2 for
// other unknown credentials, 3 when it is unavailable or rate limiting.
type ConnectError struct {
	Code byte
	Err  error
}

// Error implements error.
func (e *ConnectError) Error() string {
	msg := "refused"
	switch e.Code {
	case 1:
		msg = "unacceptable protocol version"
	case 2:
		msg = "identifier rejected (unknown credentials)"
	case 3:
		msg = "server unavailable"
	case 4:
		msg = "bad user name or password"
	case 5:
		msg = "not authorized (unknown access token)"
	}
	return fmt.Sprintf("tbgateway: connection refused: %s (CONNACK %d)", msg, e.Code)
}

// Unwrap returns the underlying error.
func (e *ConnectError) Unwrap() error { return e.Err }

// RPCError is returned by Call when the server answers with an error object
// ({"error": "..."}).
type RPCError struct {
	Method  string
	Message string
}

// Error implements error.
func (e *RPCError) Error() string {
	return "tbgateway: rpc " + strconv.Quote(e.Method) + ": " + e.Message
}

func trimPrefix(s string) string {
	const p = "tbgateway: "
	if len(s) > len(p) && s[:len(p)] == p {
		return s[len(p):]
	}
	return s
}
