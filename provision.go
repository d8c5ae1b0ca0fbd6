package tbgateway

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Provisioning topics and the user name that opens a provision-only
// session (WIRE.md 10.7).
const (
	topicProvisionRequest  = "/provision/request"
	topicProvisionResponse = "/provision/response"
	provisionUser          = "provision"
)

// CredentialsType is how a provisioned device authenticates.
type CredentialsType string

// Credentials types, as ThingsBoard spells them.
const (
	// CredentialsAccessToken: an access token as MQTT user name (the
	// default).
	CredentialsAccessToken CredentialsType = "ACCESS_TOKEN"
	// CredentialsMQTTBasic: client id, user name and password.
	CredentialsMQTTBasic CredentialsType = "MQTT_BASIC"
	// CredentialsX509: a client certificate.
	CredentialsX509 CredentialsType = "X509_CERTIFICATE"
)

// ProvisionRequest asks ThingsBoard to create a device (or hand out the
// credentials of a pre-provisioned one) in the device profile whose
// provisioning key and secret it carries.
type ProvisionRequest struct {
	Key, Secret string // the profile's provisionDeviceKey and provisionDeviceSecret; required
	DeviceName  string // "" lets the server choose one
	Gateway     bool   // mark the new device as a gateway

	// Type says which credentials the device gets (CredentialsAccessToken
	// when empty) and which fields below are sent.
	Type CredentialsType
	// Token is the access token to give the device; "" lets the server
	// generate one.
	Token string
	// ClientID, Username and Password are the MQTT basic credentials; a
	// client id or a user name is required.
	ClientID, Username, Password string
	// Certificate is the device's client certificate (with its private
	// key, which never leaves the process: only the certificate is sent).
	Certificate *tls.Certificate
}

// Credentials are what a successful provisioning returned.
type Credentials struct {
	Type                         CredentialsType
	AccessToken                  string
	ClientID, Username, Password string
	// CertificatePEM is the certificate the server stored (X.509).
	CertificatePEM string

	cert *tls.Certificate
}

// Options returns the Dial options that authenticate with these
// credentials. For X.509 they include the request's certificate and key;
// add the server's CA (WithRootCAs) as for any TLS connection.
func (c *Credentials) Options() []Option {
	switch c.Type {
	case CredentialsMQTTBasic:
		return []Option{WithBasicCredentials(c.ClientID, c.Username, c.Password)}
	case CredentialsX509:
		if c.cert != nil {
			return []Option{WithClientCertificate(*c.cert)}
		}
		return nil
	}
	return []Option{WithAccessToken(c.AccessToken)}
}

// Provisioning errors, matched with errors.Is through *ProvisionError.
var (
	// ErrProvisionNotFound: no profile has this key and secret (NOT_FOUND).
	ErrProvisionNotFound = errors.New("tbgateway: provisioning: key and secret not found")
	// ErrProvisionFailed: the server refused to provision the device, for
	// example because it exists already, or is not pre-provisioned under
	// the profile's check-pre-provisioned strategy (FAILURE).
	ErrProvisionFailed = errors.New("tbgateway: provisioning failed")
)

// ProvisionError is the server's refusal of a provision request.
type ProvisionError struct {
	Status  string // NOT_FOUND or FAILURE
	Message string // the server's errorMsg
}

func (e *ProvisionError) Error() string {
	return fmt.Sprintf("tbgateway: provisioning: %s: %s", e.Status, e.Message)
}

// Unwrap makes errors.Is match ErrProvisionNotFound or ErrProvisionFailed.
func (e *ProvisionError) Unwrap() error {
	if e.Status == "NOT_FOUND" {
		return ErrProvisionNotFound
	}
	return ErrProvisionFailed
}

// Provision asks the server at broker to provision a device and returns
// its credentials, ready for Dial (Credentials.Options). It connects with
// the provision-only session ThingsBoard opens for the user name
// "provision", publishes the request on /provision/request and waits for
// the answer on /provision/response, or until ctx ends (without a
// deadline, WithRequestTimeout). The options that apply are the
// transport ones (TLS, with verification on unless the tls.Config given
// says otherwise, WithConnectTimeout, WithRequestTimeout, WithPahoOptions);
// credentials options are ignored. Provisioning a gateway: set Gateway.
func Provision(ctx context.Context, broker string, req ProvisionRequest, opts ...Option) (*Credentials, error) {
	o, u, err := parseDialOptions(broker, opts)
	if err != nil {
		return nil, err
	}
	body, err := encodeProvisionRequest(req)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.requestTimeout)
		defer cancel()
	}
	po := mqtt.NewClientOptions().
		AddBroker(u.String()).
		SetClientID(randomClientID()).
		SetUsername(provisionUser).
		SetConnectTimeout(o.connectTimeout).
		SetCleanSession(true)
	if t := o.tls(); t != nil {
		po.SetTLSConfig(t)
	}
	for _, f := range o.paho {
		f(po)
	}
	po.SetAutoReconnect(false).SetConnectRetry(false)
	replies := make(chan []byte, 1)
	po.SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
		if m.Topic() == topicProvisionResponse {
			select {
			case replies <- append([]byte(nil), m.Payload()...):
			default:
			}
		}
	})
	c := mqtt.NewClient(po)
	if err := waitToken(ctx, c.Connect()); err != nil {
		return nil, fmt.Errorf("tbgateway: provisioning: connect: %w", err)
	}
	defer c.Disconnect(0)
	if err := waitToken(ctx, c.Subscribe(topicProvisionResponse, 1, nil)); err != nil {
		return nil, fmt.Errorf("tbgateway: provisioning: subscribe: %w", err)
	}
	if err := waitToken(ctx, c.Publish(topicProvisionRequest, 1, false, body)); err != nil {
		return nil, fmt.Errorf("tbgateway: provisioning: request: %w", err)
	}
	select {
	case b := <-replies:
		return decodeProvisionReply(b, req.Certificate)
	case <-ctx.Done():
		return nil, fmt.Errorf("tbgateway: provisioning: no answer: %w", ctx.Err())
	}
}

// waitToken waits for a paho token or ctx.
func waitToken(ctx context.Context, t mqtt.Token) error {
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// provisionJSON is the request on the wire; only what the credentials
// type uses is sent.
type provisionJSON struct {
	Key             string          `json:"provisionDeviceKey"`
	Secret          string          `json:"provisionDeviceSecret"`
	DeviceName      string          `json:"deviceName,omitempty"`
	CredentialsType CredentialsType `json:"credentialsType,omitempty"`
	Token           string          `json:"token,omitempty"`
	ClientID        string          `json:"clientId,omitempty"`
	Username        string          `json:"username,omitempty"`
	Password        string          `json:"password,omitempty"`
	Hash            string          `json:"hash,omitempty"`
	Gateway         bool            `json:"gateway,omitempty"`
}

// encodeProvisionRequest checks and builds the request.
func encodeProvisionRequest(r ProvisionRequest) ([]byte, error) {
	if r.Key == "" || r.Secret == "" {
		return nil, fmt.Errorf("%w: provisioning needs the profile's key and secret", ErrInvalidValue)
	}
	if r.DeviceName != "" {
		if err := checkDeviceName(r.DeviceName); err != nil {
			return nil, err
		}
	}
	j := provisionJSON{Key: r.Key, Secret: r.Secret, DeviceName: r.DeviceName, Gateway: r.Gateway}
	switch r.Type {
	case "", CredentialsAccessToken:
		if r.Token != "" {
			j.CredentialsType, j.Token = CredentialsAccessToken, r.Token
		}
	case CredentialsMQTTBasic:
		if r.ClientID == "" && r.Username == "" {
			return nil, fmt.Errorf("%w: MQTT basic credentials need a client id or a user name", ErrInvalidValue)
		}
		j.CredentialsType, j.ClientID, j.Username, j.Password = CredentialsMQTTBasic, r.ClientID, r.Username, r.Password
	case CredentialsX509:
		if r.Certificate == nil || len(r.Certificate.Certificate) == 0 {
			return nil, fmt.Errorf("%w: X.509 credentials need the device's certificate", ErrInvalidValue)
		}
		j.CredentialsType = CredentialsX509
		j.Hash = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Certificate.Certificate[0]}))
	default:
		return nil, fmt.Errorf("%w: credentials type %q", ErrInvalidValue, r.Type)
	}
	return json.Marshal(j)
}

// decodeProvisionReply reads the answer: the credentials, or the
// server's refusal.
func decodeProvisionReply(b []byte, cert *tls.Certificate) (*Credentials, error) {
	var r struct {
		Status           string          `json:"status"`
		ErrorMsg         string          `json:"errorMsg"`
		CredentialsType  CredentialsType `json:"credentialsType"`
		CredentialsValue json.RawMessage `json:"credentialsValue"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: provisioning: %v", ErrMalformedReply, err)
	}
	switch r.Status {
	case "SUCCESS":
	case "NOT_FOUND", "FAILURE":
		return nil, &ProvisionError{Status: r.Status, Message: r.ErrorMsg}
	default:
		return nil, fmt.Errorf("%w: provisioning: status %q", ErrMalformedReply, r.Status)
	}
	c := &Credentials{Type: r.CredentialsType}
	switch r.CredentialsType {
	case CredentialsMQTTBasic:
		var v struct {
			ClientID string `json:"clientId"`
			UserName string `json:"userName"`
			Password string `json:"password"`
		}
		if err := json.Unmarshal(r.CredentialsValue, &v); err != nil {
			return nil, fmt.Errorf("%w: provisioning: MQTT basic credentials: %v", ErrMalformedReply, err)
		}
		c.ClientID, c.Username, c.Password = v.ClientID, v.UserName, v.Password
	case CredentialsAccessToken, CredentialsX509:
		var v string
		if err := json.Unmarshal(r.CredentialsValue, &v); err != nil || v == "" {
			return nil, fmt.Errorf("%w: provisioning: credentials value %s", ErrMalformedReply, r.CredentialsValue)
		}
		if r.CredentialsType == CredentialsX509 {
			c.CertificatePEM, c.cert = v, cert
		} else {
			c.AccessToken = v
		}
	default:
		return nil, fmt.Errorf("%w: provisioning: credentials type %q", ErrMalformedReply, r.CredentialsType)
	}
	return c, nil
}
