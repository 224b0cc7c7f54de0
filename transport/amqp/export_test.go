package amqp

// GivenUpHeader is givenUpHeader, for the external tests.
const GivenUpHeader = givenUpHeader
