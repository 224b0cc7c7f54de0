package celery

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
)

// Envelope is kombu's Redis form of a message: one JSON document per list
// item, the body base64-encoded.
type Envelope struct {
	Body            string         `json:"body"`
	ContentEncoding string         `json:"content-encoding"`
	ContentType     string         `json:"content-type"`
	Headers         map[string]any `json:"headers"`
	Properties      Properties     `json:"properties"`
}

// Properties are an envelope's message properties. DeliveryTag and
// DeliveryInfo are required by Celery's worker, which crashes without
// them.
type Properties struct {
	CorrelationID string       `json:"correlation_id"`
	ReplyTo       string       `json:"reply_to"`
	DeliveryMode  int          `json:"delivery_mode"`
	DeliveryInfo  DeliveryInfo `json:"delivery_info"`
	Priority      int          `json:"priority"`
	BodyEncoding  string       `json:"body_encoding"`
	DeliveryTag   string       `json:"delivery_tag"`
}

// DeliveryInfo names where a message was published: the exchange ("" for
// the default one) and the routing key, the queue's name.
type DeliveryInfo struct {
	Exchange   string `json:"exchange"`
	RoutingKey string `json:"routing_key"`
}

// DecodeEnvelope reads a task from kombu's Redis envelope, and returns
// the envelope too (its delivery tag acknowledges it).
func DecodeEnvelope(raw []byte) (Task, Envelope, error) {
	var e Envelope
	var must struct {
		Properties struct {
			DeliveryTag  *string         `json:"delivery_tag"`
			DeliveryInfo json.RawMessage `json:"delivery_info"`
		} `json:"properties"`
	}
	if err := json.Unmarshal(raw, &e); err != nil {
		return Task{}, e, fmt.Errorf("%w: not a kombu envelope: %v", ErrMalformed, err)
	}
	json.Unmarshal(raw, &must)
	if tag := must.Properties.DeliveryTag; tag == nil || *tag == "" {
		return Task{}, e, fmt.Errorf("%w: the envelope has no delivery tag", ErrMalformed)
	}
	if !isJSON(must.Properties.DeliveryInfo, '{') {
		return Task{}, e, fmt.Errorf("%w: the envelope has no delivery info", ErrMalformed)
	}
	body := []byte(e.Body)
	switch e.Properties.BodyEncoding {
	case "base64":
		b, err := base64.StdEncoding.DecodeString(e.Body)
		if err != nil {
			return Task{}, e, fmt.Errorf("%w: body is not base64: %v", ErrMalformed, err)
		}
		body = b
	case "":
	default:
		return Task{}, e, fmt.Errorf("%w: body encoding %q", ErrMalformed, e.Properties.BodyEncoding)
	}
	t, err := Decode(e.ContentType, e.ContentEncoding, e.Headers, body)
	if err != nil {
		return t, e, err
	}
	t.CorrelationID, t.ReplyTo, t.Priority = e.Properties.CorrelationID, e.Properties.ReplyTo, e.Properties.Priority
	return t, e, nil
}

// EncodeEnvelope returns kombu's Redis envelope of t for queue, under the
// delivery tag tag (kombu uses a fresh uuid4).
func EncodeEnvelope(t Task, queue, tag string) ([]byte, error) {
	if t.ID == "" || t.Name == "" || queue == "" || tag == "" {
		return nil, fmt.Errorf("%w: an envelope needs a task id, a task name, a queue and a delivery tag", ErrMalformed)
	}
	body, err := t.Body()
	if err != nil {
		return nil, err
	}
	headers := t.Headers()
	corr := t.CorrelationID
	if corr == "" {
		corr = t.ID
	}
	return json.Marshal(Envelope{
		Body: base64.StdEncoding.EncodeToString(body), ContentEncoding: "utf-8", ContentType: ContentType,
		Headers: headers,
		Properties: Properties{
			CorrelationID: corr, ReplyTo: t.ReplyTo, DeliveryMode: 2,
			DeliveryInfo: DeliveryInfo{RoutingKey: queue}, Priority: t.Priority,
			BodyEncoding: "base64", DeliveryTag: tag,
		},
	})
}

// PriorityList returns the Redis list kombu keeps a queue's messages of
// priority p in: the queue itself for 0 to 2, then one list for each of
// 3 to 5, 6 to 8 and 9. Celery's worker pops the lists in that order, so
// on Redis a lower number is served first.
func PriorityList(queue string, p int) string {
	step := min(max(p, 0), 9) / 3 * 3
	if step == 0 {
		return queue
	}
	return fmt.Sprintf("%s\x06\x16%d", queue, step)
}
