// MailRetriever
